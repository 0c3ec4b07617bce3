"""tf.data pipelines, dataset sources and segmentation metrics (imports TensorFlow lazily)."""
