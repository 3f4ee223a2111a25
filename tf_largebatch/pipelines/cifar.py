"""CIFAR-10 input pipeline for ResNet-20 (TFDS ``cifar10``).

Training: zero-pad 4 pixels, random 32x32 crop, random horizontal flip (He et
al. 2016, §4.2); both splits normalised by the per-channel training-set mean
and standard deviation.

References:
    He et al., "Deep Residual Learning for Image Recognition", 2016, §4.2;
    Zhao et al., SNGM, §7.1.
"""

import tensorflow as tf

from tf_largebatch.pipelines import imagenet

NUM_CLASSES = 10
NUM_TRAIN_EXAMPLES = 50_000
MEAN_RGB = (0.4914 * 255, 0.4822 * 255, 0.4465 * 255)
STDDEV_RGB = (0.2470 * 255, 0.2435 * 255, 0.2616 * 255)


def normalize(image):
    image = tf.cast(image, tf.float32)
    return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def preprocess_train(image, image_size):
    image = tf.image.resize_with_crop_or_pad(image, image_size + 8, image_size + 8)
    image = tf.image.random_crop(image, [image_size, image_size, 3])
    image = tf.image.random_flip_left_right(image)
    return normalize(image)


def preprocess_eval(image, image_size):
    return normalize(tf.image.resize_with_crop_or_pad(image, image_size, image_size))


def make_datasets(cfg):
    """``(train, eval or None)`` batched ``(image, one_hot_label)`` datasets."""
    return imagenet.make_datasets(
        cfg, num_classes=NUM_CLASSES, train_fn=preprocess_train, eval_fn=preprocess_eval
    )
