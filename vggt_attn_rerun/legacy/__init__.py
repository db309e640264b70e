"""The seed script's API (AttentionExtractor, ...) and full attention matrices."""
