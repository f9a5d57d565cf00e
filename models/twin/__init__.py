"""The digital twin: pure physics (``sim``), devices and encoders (``devices``, ``registers``),
protocol servers at the edge (``servers``) and the clock-driven runner (``runner``)."""
