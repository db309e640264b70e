"""What ``import vggt_attn_rerun`` offers, what it leaves unloaded, and how old names warn."""

import subprocess
import sys
import textwrap
import warnings

import pytest

import vggt_attn_rerun
from vggt_attn_rerun.legacy import full
from vggt_attn_rerun.legacy import visualize_attention as earlier_script

# Names the package root once exported, with the module that defines them.
OLD_NAMES = {
    "AttentionExtractor": earlier_script,
    "demo_visualize_token_attention": earlier_script,
    "extract_both_attentions": earlier_script,
    "get_attention_values": earlier_script,
    "visualize_attention_on_image": earlier_script,
    "capture_full": full,
    "TokenLayout": "vggt_attn_rerun.core.tokens",
    "log_run": "vggt_attn_rerun.viz.log_run",
    "UserError": "vggt_attn_rerun.errors",
}
# Names the package root once exported whose definition has a new name now.
RENAMED = {"log_queries": ("vggt_attn_rerun.viz.log_run", "log_added_queries")}


def test_the_public_surface_is_small():
    assert len(vggt_attn_rerun.__all__) <= 12
    assert {"load_model", "load_images", "Query", "capture", "record_attention", "run", "compare"} <= set(
        vggt_attn_rerun.__all__
    )


def test_every_public_name_resolves_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        missing = [name for name in vggt_attn_rerun.__all__ if getattr(vggt_attn_rerun, name, None) is None]
    assert missing == []
    assert set(vggt_attn_rerun.__all__) <= set(dir(vggt_attn_rerun))


def test_importing_the_package_loads_no_legacy_code_until_a_legacy_name_is_used():
    script = textwrap.dedent(
        """
        import sys, warnings
        warnings.simplefilter("ignore")
        import vggt_attn_rerun
        print(sorted(m for m in sys.modules if m.startswith("vggt_attn_rerun.legacy")))
        from vggt_attn_rerun import AttentionExtractor
        print(AttentionExtractor.__module__, "vggt_attn_rerun.legacy.extraction" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.splitlines() == ["[]", "vggt_attn_rerun.legacy.extraction True"]


@pytest.mark.parametrize("name", sorted(OLD_NAMES))
def test_an_old_name_still_resolves_with_a_deprecation_warning_naming_its_home(name):
    home = OLD_NAMES[name]
    home_name = "visualize_attention" if home is earlier_script else getattr(home, "__name__", home)
    with pytest.warns(DeprecationWarning, match=rf"from {home_name} import {name}"):
        value = getattr(vggt_attn_rerun, name)
    module = home if not isinstance(home, str) else sys.modules[home]
    assert value is getattr(module, name)
    assert name not in vggt_attn_rerun.__all__ and name not in dir(vggt_attn_rerun)


@pytest.mark.parametrize("name", sorted(RENAMED))
def test_an_old_name_that_was_renamed_warns_with_its_new_name(name):
    home, new_name = RENAMED[name]
    with pytest.warns(DeprecationWarning, match=rf"from {home} import {new_name}`"):
        value = getattr(vggt_attn_rerun, name)
    assert value is getattr(sys.modules[home], new_name)


def test_the_earlier_scripts_module_gives_its_names_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from visualize_attention import AttentionExtractor, get_attention_values

    assert AttentionExtractor is earlier_script.AttentionExtractor
    assert get_attention_values is earlier_script.get_attention_values


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'extract_attention'"):
        vggt_attn_rerun.extract_attention  # noqa: B018


def test_the_api_package_exports_no_helpers():
    from vggt_attn_rerun import api

    assert "plural" not in api.__all__ and not hasattr(api, "plural")
    missing = [name for name in api.__all__ if getattr(api, name, None) is None]
    assert missing == []
