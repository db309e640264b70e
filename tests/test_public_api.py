"""What ``import vggt_attn_rerun`` offers, and what it leaves unloaded."""

import subprocess
import sys
import textwrap

import pytest

import vggt_attn_rerun
from vggt_attn_rerun.legacy import full
from vggt_attn_rerun.legacy import visualize_attention as seed_api

LEGACY_NAMES = {
    "AttentionExtractor": seed_api,
    "demo_visualize_token_attention": seed_api,
    "extract_both_attentions": seed_api,
    "get_attention_values": seed_api,
    "visualize_attention_on_image": seed_api,
    "capture_full": full,
}


def test_importing_the_package_loads_no_legacy_code_until_a_legacy_name_is_used():
    script = textwrap.dedent(
        """
        import sys
        import vggt_attn_rerun
        print(sorted(m for m in sys.modules if m.startswith("vggt_attn_rerun.legacy")))
        from vggt_attn_rerun import AttentionExtractor
        print(AttentionExtractor.__module__, "vggt_attn_rerun.legacy.seed" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.splitlines() == ["[]", "vggt_attn_rerun.legacy.seed True"]


@pytest.mark.parametrize("name", sorted(LEGACY_NAMES))
def test_legacy_names_resolve_to_the_legacy_objects(name):
    assert getattr(vggt_attn_rerun, name) is getattr(LEGACY_NAMES[name], name)
    assert name in vggt_attn_rerun.__all__ and name in dir(vggt_attn_rerun)


def test_every_public_name_resolves():
    assert len(vggt_attn_rerun.__all__) > len(LEGACY_NAMES)
    missing = [name for name in vggt_attn_rerun.__all__ if getattr(vggt_attn_rerun, name, None) is None]
    assert missing == []


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'extract_attention'"):
        vggt_attn_rerun.extract_attention  # noqa: B018
