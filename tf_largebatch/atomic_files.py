"""Atomic file writes, written once for the package: a temporary file renamed into place.

A reader (or a rerun after a kill) sees the old file or the new one, never a
part. Local paths use ``os.replace``; remote paths (``gs://...``) go through
``tf.io.gfile`` (imported only for them, so local writes do not load TensorFlow).
"""

import os


def _is_remote(path):
    return "://" in str(path)


def write_text_atomically(path, text):
    """Writes ``text`` to ``path`` through ``<path>.tmp`` and a rename.

    Args:
        path: a local path (``str`` or ``pathlib.Path``) or a ``tf.io.gfile`` URL.
        text: the file's whole content.
    """
    path = str(path)
    temporary = path + ".tmp"
    if _is_remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(temporary, "w") as stream:
            stream.write(text)
        tf.io.gfile.rename(temporary, path, overwrite=True)
        return
    with open(temporary, "w", encoding="utf-8", newline="") as stream:
        stream.write(text)
    os.replace(temporary, path)
