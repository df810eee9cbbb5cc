"""Training data in InternVL's formats: the meta file, annotations, images and videos."""
