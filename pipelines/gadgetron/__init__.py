"""A real Gadgetron 4.x for tests and benchmarks: starting one (:mod:`.server`) and playing
its part for one external Python module (:mod:`.parent`)."""
