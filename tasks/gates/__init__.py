"""Data-quality gates: Great Expectations suites over the pair tables, plus the eval gate.

Great Expectations is imported inside the functions that run a suite (it takes seconds to
import), never when this package is imported.
"""
