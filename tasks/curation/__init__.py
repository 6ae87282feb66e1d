"""Curation algorithms behind the curate stage: DataComp basic filters, exact dedup,
MetaCLIP metadata, substring matching and balancing, and the curation report."""
