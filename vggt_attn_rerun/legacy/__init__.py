"""The API of the earlier script ``visualize_attention.py`` (AttentionExtractor, ...) and full attention matrices.

``extraction`` (hooks and full maps), ``values`` (maps as arrays), ``figures`` (matplotlib),
``demos``; ``visualize_attention`` re-exports them all under the script's module name.
"""
