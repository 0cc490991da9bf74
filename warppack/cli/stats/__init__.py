"""``warppack stats``: read a data set's lengths, compute what packing does, report and plot it."""
