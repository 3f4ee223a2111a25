"""Shared input plumbing: TFDS loading with clear errors, TFRecord file lists."""

import socket

import tensorflow as tf

from tf_largebatch.config import ConfigError

# Where tensorflow-datasets expects manually downloaded archives.
_MANUAL_FILES = {
    "imagenet2012": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar",
}


def load_tfds(data_cfg, split, *, shuffle_files, path="data.name"):
    """``tfds.load(data_cfg.name, split=split)`` or a ConfigError saying what is missing.

    Datasets that need a manual download (ImageNet) fail with the directory
    where the archives must be placed.
    """
    import tensorflow_datasets as tfds

    data_dir = data_cfg.data_dir or tfds.core.constants.DATA_DIR
    if is_remote(data_cfg.data_dir):
        check_reachable(data_cfg.data_dir, "data.data_dir")
    if data_cfg.download:
        check_network_for_download(data_cfg)
    try:
        return tfds.load(data_cfg.name, split=split, data_dir=data_cfg.data_dir, shuffle_files=shuffle_files,
                         download=data_cfg.download)
    except AssertionError as error:
        if "manual" not in str(error).lower() and not _needs_manual_download(data_cfg):
            if data_cfg.download:
                raise ConfigError("data.download", f"preparing {data_cfg.name!r} failed: {_first_line(error)}") \
                    from None
            raise ConfigError(
                path,
                f"{data_cfg.name!r} is not prepared in {data_dir}: prepare it once where there is network "
                f"(`tfds build {data_cfg.name}`, or set data.download: true), or set data.data_dir to a "
                "prepared copy, or give data.train_files as TFRecord files.",
            ) from None
        base = data_cfg.name.split("/")[0].split(":")[0]
        files = _MANUAL_FILES.get(base, "the archives named in the dataset's documentation")
        raise ConfigError(
            path,
            f"{data_cfg.name!r} needs a manual download: put {files} in "
            f"{data_dir}/downloads/manual/ (or set data.data_dir), then run again; "
            "or give data.train_files as TFRecord files.",
        ) from None
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as error:
        if isinstance(error, ValueError) and "split" in str(error).lower():
            raise ConfigError("data.train_split / data.eval_split", str(error)) from None
        raise ConfigError(path, f"cannot load {data_cfg.name!r}: {error}") from None
    except Exception as error:  # noqa: BLE001 - downloads fail in many ways; one line, not a traceback
        if not data_cfg.download:
            raise
        raise ConfigError("data.download", f"preparing {data_cfg.name!r} failed: {_first_line(error)}") from None


def _first_line(error):
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


# Where a download starts: TFDS tries its Google Cloud Storage mirror first.
DOWNLOAD_PROBE = ("storage.googleapis.com", 443)
DOWNLOAD_PROBE_TIMEOUT = 5.0


def check_network_for_download(data_cfg):
    """A ConfigError at once if ``data.download`` is on but the network is not
    reachable (TFDS would retry for minutes, then print a long traceback)."""
    host, port = DOWNLOAD_PROBE
    try:
        socket.create_connection((host, port), timeout=DOWNLOAD_PROBE_TIMEOUT).close()
    except OSError as error:
        raise ConfigError(
            "data.download",
            f"true, but this machine cannot reach the network ({host}:{port}: {error}); prepare "
            f"{data_cfg.name!r} where there is network (`tfds build {data_cfg.name} --data_dir DIR`), then set "
            "data.data_dir to DIR and data.download: false",
        ) from None


def check_reachable(path, key):
    """A ConfigError naming ``key`` if the remote ``path`` cannot be reached or does not exist."""
    try:
        exists = tf.io.gfile.exists(path)
    except tf.errors.OpError as error:
        raise ConfigError(key, f"cannot reach {path}: {_first_line(error)}") from None
    if not exists:
        raise ConfigError(key, f"{path} does not exist")


def is_remote(path):
    """Whether ``path`` names a remote file system (``gs://``, ``s3://``, ...)."""
    return "://" in (path or "")


def missing_local_data(data_cfg):
    """Why the real data of ``data_cfg`` cannot be read locally, or ``None`` if it can.

    Looks without reading: remote paths (``gs://...``) count as not local,
    TFRecord patterns must match files, a TFDS dataset must be prepared in
    ``data.data_dir`` (or TFDS's default directory).
    """
    for key in ("train_files", "eval_files"):
        pattern = getattr(data_cfg, key)
        if not pattern:
            continue
        parts = [p.strip() for p in pattern.split(",")]
        if any(is_remote(p) for p in parts):
            return f"data.{key} {pattern!r} is not on this machine"
        if not any(tf.io.gfile.glob(p) for p in parts):
            return f"no files match data.{key} {pattern!r}"
    if data_cfg.train_files or not data_cfg.name:
        return None
    if is_remote(data_cfg.data_dir):
        return f"data.data_dir {data_cfg.data_dir!r} is not on this machine"
    import tensorflow_datasets as tfds

    try:
        prepared = tfds.builder(data_cfg.name, data_dir=data_cfg.data_dir).is_prepared()
    except Exception as error:  # noqa: BLE001 - any failure to find the dataset means it is not usable here
        return f"{data_cfg.name!r} cannot be found ({str(error).strip().splitlines()[0] if str(error) else error})"
    if not prepared:
        where = data_cfg.data_dir or tfds.core.constants.DATA_DIR
        return f"{data_cfg.name!r} is not prepared in {where}"
    return None


def _needs_manual_download(data_cfg):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(data_cfg.name, data_dir=data_cfg.data_dir)
    except Exception:  # noqa: BLE001 - an unknown name is reported by tfds.load's own error
        return False
    return bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))


def tfrecord_files(pattern, path, *, check_record=None):
    """Sorted files matching ``pattern`` (a glob, or several joined by commas).

    The first record of every file is read (and given to ``check_record``, a
    function that parses and decodes one serialized record), so a corrupt shard,
    a wrong feature schema or undecodable contents fail before training, with
    the file's name.
    """
    files = []
    for part in pattern.split(","):
        try:
            files.extend(tf.io.gfile.glob(part.strip()))
        except tf.errors.OpError as error:
            raise ConfigError(path, f"cannot reach {part.strip()}: {_first_line(error)}") from None
    if not files:
        raise ConfigError(path, f"no files match {pattern!r}")
    for file in files:
        _check_first_record(file, path, check_record)
    return sorted(files)


def _check_first_record(file, path, check_record):
    try:
        for record in tf.data.TFRecordDataset(file).take(1):
            pass
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        message = str(error).strip().splitlines()[0]
        raise ConfigError(path, f"{file}: not a readable TFRecord file ({message})") from None
    if check_record is None:
        return
    try:
        check_record(record)
    except (tf.errors.InvalidArgumentError, ValueError) as error:
        message = str(error).strip().splitlines()[0]
        raise ConfigError(path, f"{file}: its records do not have the expected features or contents "
                          f"({message})") from None


def tfrecord_dataset(pattern, path, *, shuffle, seed, check_record=None):
    """A ``TFRecordDataset`` over the files of ``pattern``, interleaved and
    (for training) shuffled by file; sharded per worker by tf.distribute.
    ``check_record``: see :func:`tfrecord_files`."""
    files = tf.data.Dataset.from_tensor_slices(tfrecord_files(pattern, path, check_record=check_record))
    if shuffle:
        files = files.shuffle(files.cardinality(), seed=seed, reshuffle_each_iteration=True)
    return files.interleave(
        tf.data.TFRecordDataset, cycle_length=tf.data.AUTOTUNE, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle,
    )


def finish(ds, preprocess, batch_size, *, training, shuffle_buffer, seed, cache=False):
    """Cache (raw records), repeat, shuffle (training), preprocess, fixed-size
    batches (static shapes, as TPUs need), prefetch."""
    if cache:
        ds = ds.cache()
    ds = ds.repeat()
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
