"""ImageNet input pipeline for ResNet-50 (TFDS ``imagenet2012`` or TFRecords).

Training: Inception-style random resized crop (area 8%-100%, aspect ratio
3/4-4/3) and a random horizontal flip; evaluation: a centre crop of
``image_size / (image_size + 32)`` of the shorter side, resized. Both
normalise with the ImageNet channel means and standard deviations. Labels are
one-hot so the loss can apply label smoothing.

References:
    Szegedy et al., "Going Deeper with Convolutions", 2015 (random resized
    crop); Goyal et al., 2017, §5.1; the MLPerf ResNet-50 reference
    preprocessing.
"""

import tensorflow as tf

from tf_largebatch.pipelines import datasets

NUM_CLASSES = 1000
NUM_TRAIN_EXAMPLES = 1_281_167
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CROP_PADDING = 32


def normalize(image):
    image = tf.cast(image, tf.float32)
    return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def random_resized_crop(image, image_size, *, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3)):
    """A random crop covering ``area_range`` of the image, resized to a square."""
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=bbox,
        min_object_covered=0.1,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    return tf.image.resize(crop, [image_size, image_size], method="bilinear")


def center_crop(image, image_size):
    """The central ``image_size / (image_size + 32)`` of the shorter side, resized."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    fraction = image_size / (image_size + CROP_PADDING)
    crop = tf.cast(fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    crop = tf.maximum(crop, 1)
    top = (height - crop + 1) // 2
    left = (width - crop + 1) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, crop, crop)
    return tf.image.resize(image, [image_size, image_size], method="bicubic")


def preprocess_train(image, image_size):
    image = random_resized_crop(image, image_size)
    image = tf.image.random_flip_left_right(image)
    return normalize(image)


def preprocess_eval(image, image_size):
    return normalize(center_crop(image, image_size))


def parse_tfrecord(serialized, label_offset):
    """Decodes the standard ImageNet TFRecord format (``image/encoded`` JPEG,
    ``image/class/label``); ``label_offset`` is subtracted (1 for the 1-based
    labels of ``imagenet_to_gcs.py``)."""
    features = tf.io.parse_single_example(
        serialized,
        {
            "image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        },
    )
    image = tf.io.decode_image(features["image/encoded"], channels=3, expand_animations=False)
    return image, features["image/class/label"] - label_offset


def make_datasets(cfg, *, num_classes=NUM_CLASSES, train_fn=preprocess_train, eval_fn=preprocess_eval):
    """``(train, eval or None)``: batched ``(image, one_hot_label)`` datasets.

    Batches hold ``cfg.micro_batch_size`` examples (one accumulation
    micro-step over all replicas); both repeat forever.
    """
    data = cfg.data
    size = data.image_size
    num_classes = cfg.model.args.get("num_classes", num_classes)
    seed = cfg.training.seed

    def source(pattern, split, training):
        if pattern:
            path = "data.train_files" if training else "data.eval_files"
            parse = lambda r: parse_tfrecord(r, data.label_offset)  # noqa: E731
            records = datasets.tfrecord_dataset(pattern, path, shuffle=training, seed=seed, check_record=parse)
            return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        ds = datasets.load_tfds(data, split, shuffle_files=training)
        return ds.map(lambda ex: (ex["image"], ex["label"]))

    def prep(fn):
        return lambda image, label: (fn(image, size), tf.one_hot(label, num_classes))

    train = datasets.finish(
        source(data.train_files, data.train_split, True), prep(train_fn), cfg.micro_batch_size,
        training=True, shuffle_buffer=data.shuffle_buffer, seed=seed, cache=data.cache,
    )
    evaluation = None
    if cfg.training.eval_steps and (data.eval_files or (data.name and data.eval_split)):
        evaluation = datasets.finish(
            source(data.eval_files, data.eval_split, False), prep(eval_fn), cfg.micro_batch_size,
            training=False, shuffle_buffer=0, seed=seed,
        )
    return train, evaluation
