"""Shared input plumbing: TFDS loading with clear errors, TFRecord file lists."""

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
    try:
        return tfds.load(data_cfg.name, split=split, data_dir=data_cfg.data_dir, shuffle_files=shuffle_files,
                         download=data_cfg.download)
    except AssertionError as error:
        if "manual" not in str(error).lower() and not _needs_manual_download(data_cfg):
            if data_cfg.download:
                raise
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


def tfrecord_files(pattern, path):
    """Sorted files matching ``pattern`` (a glob, or several joined by commas)."""
    files = []
    for part in pattern.split(","):
        files.extend(tf.io.gfile.glob(part.strip()))
    if not files:
        raise ConfigError(path, f"no files match {pattern!r}")
    for file in files:
        _check_readable_tfrecord(file, path)
    return sorted(files)


def _check_readable_tfrecord(file, path):
    """Reads the first record of ``file``, so a corrupt shard fails before training, by name."""
    try:
        for _ in tf.data.TFRecordDataset(file).take(1):
            pass
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        message = str(error).strip().splitlines()[0]
        raise ConfigError(path, f"{file}: not a readable TFRecord file ({message})") from None


def tfrecord_dataset(pattern, path, *, shuffle, seed):
    """A ``TFRecordDataset`` over the files of ``pattern``, interleaved and
    (for training) shuffled by file; sharded per worker by tf.distribute."""
    files = tf.data.Dataset.from_tensor_slices(tfrecord_files(pattern, path))
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
