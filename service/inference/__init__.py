"""Inference: an upload or a tensor in, probabilities out. The registry of served versions, the runtimes, the
image pipeline (priced from the header, then decoded and normalized) and the one call every protocol makes;
no Flask."""
