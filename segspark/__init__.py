"""segspark: customer segmentation at lake scale on Apache Spark."""

__version__ = "0.1.0"
