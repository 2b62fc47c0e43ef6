"""llama.cpp's extra weight buffers: off on AMX CPUs (its AMX kernel crashes some hosts), the environment's
choice first, and the swap of the binding's model defaults undone after loading."""

from __future__ import annotations

import types

import pytest
from test_gguf_support import llama_cpp_missing

from llm_surgeon.gguf.llama_buffers import EXTRA_BUFFERS_ENV, cpu_flags, extra_buffers, extra_buffers_wanted


def test_cpu_flags_read_the_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_int8"}
    assert cpu_flags(tmp_path / "absent") == set()


@pytest.mark.parametrize("flags, env, wanted", [
    ({"avx2"}, {}, True), ({"avx2", "amx_int8"}, {}, False),
    ({"avx2", "amx_int8"}, {EXTRA_BUFFERS_ENV: "1"}, True), ({"avx2"}, {EXTRA_BUFFERS_ENV: "0"}, False),
    ({"amx_int8"}, {EXTRA_BUFFERS_ENV: "yes please"}, False)])
def test_extra_buffers_off_on_amx_unless_the_environment_says(flags, env, wanted):
    assert extra_buffers_wanted(flags, env) is wanted


def test_defaults_swapped_only_while_loading():
    def defaults():
        return types.SimpleNamespace(use_extra_bufts=True, n_gpu_layers=0)

    binding = types.SimpleNamespace(llama_cpp=types.SimpleNamespace(llama_model_default_params=defaults))
    with extra_buffers(binding, False):
        assert binding.llama_cpp.llama_model_default_params().use_extra_bufts is False
    assert binding.llama_cpp.llama_model_default_params is defaults
    with pytest.raises(RuntimeError), extra_buffers(binding, False):
        raise RuntimeError("a failed load")
    assert binding.llama_cpp.llama_model_default_params is defaults


@llama_cpp_missing
def test_the_binding_loads_its_model_from_the_swapped_defaults():
    """The swap works only while ``Llama`` takes its model parameters from this function: checked on the
    installed binding, so that an upgrade that changes it fails here rather than crashing on AMX."""
    import inspect

    import llama_cpp

    source = inspect.getsource(llama_cpp.Llama.__init__)
    assert "llama_cpp.llama_model_default_params()" in source
    assert "use_extra_bufts" in {name for name, _ in llama_cpp.llama_cpp.llama_model_params._fields_}
