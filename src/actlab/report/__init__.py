"""Reports built on the public API: `scan`, the model's activation X-ray."""

from actlab.report.scan import ScanResult, scan

__all__ = ["ScanResult", "scan"]
