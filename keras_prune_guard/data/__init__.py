"""The one validator for images, labels and data forms; lab HDF5 and image readers; batching.

Also tf.distribute replication (`distribute`).
"""
