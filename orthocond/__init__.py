"""orthocond: covariance conditioning for networks with an SVD meta-layer."""

__version__ = "0.1.0"
