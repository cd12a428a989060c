"""The batched PyTorch simulator of a network (float and bit-exact integer) and its evaluation
on a data set."""
