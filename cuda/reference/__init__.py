"""Pure-PyTorch twins of every kernel: the CPU path and the oracle for tests."""
