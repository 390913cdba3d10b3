"""mnist-dvc: the code of the four DVC stages and the few modules they share."""
