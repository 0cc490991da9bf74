"""Where batches come from: a batch sampler for map-style data sets and an iterable data set for streams."""
