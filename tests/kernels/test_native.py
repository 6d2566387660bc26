"""The C++ launcher's Python side (kernels/native.py) on the CPU: how a compiled launch is
packed into kernel parameters, what is refused, and that the extension builds with this
torch. Its launches need a GPU: tests/kernels/test_native_gpu.py."""

from __future__ import annotations

import struct
import warnings
from types import SimpleNamespace

import pytest
import torch

from sparse_kernels import native, ops


class _Resolved:
    """A launch after its first call, as native._kernel reads it."""

    def __init__(self, signature: dict, rest: tuple, **metadata):
        meta = dict(num_warps=4, shared=1024, num_ctas=1, global_scratch_size=0, profile_scratch_size=0)
        compiled = SimpleNamespace(src=SimpleNamespace(signature=signature), function=1234,
                                   metadata=SimpleNamespace(**{**meta, **metadata}))
        self.parts = (compiled, (7, 3, 1), rest)

    def resolved(self):
        return self.parts


SIGNATURE = {"Q": "*bf16", "OUT": "*bf16", "n": "i32", "scale": "fp32", "big": "i64", "ONE": "constexpr",
             "BLOCK": "constexpr"}


def test_parameters_are_what_tritons_launcher_passes():
    """Tensors by slot, scalars at their width in 8-byte places, constexprs (ints equal to
    1 included) left out, then the null global and profile scratch pointers."""
    function, grid, threads, shared, data, offsets, pointers = native._kernel(
        _Resolved(SIGNATURE, (1000, 0.5, 2**40, 1, 64)), (3, 5))
    assert (function, grid, threads, shared) == (1234, [7, 3, 1], 128, 1024)
    assert offsets == [0, 8, 16, 24, 32, 40, 48]  # Q, OUT, n, scale, big, global scratch, profile scratch
    assert pointers == [(0, 3), (8, 5)]
    assert struct.unpack_from("<i", data, 16)[0] == 1000
    assert struct.unpack_from("<f", data, 24)[0] == 0.5
    assert struct.unpack_from("<q", data, 32)[0] == 2**40
    assert data[40:56] == bytes(16) and len(data) == 56


@pytest.mark.parametrize("metadata", [dict(num_ctas=2), dict(global_scratch_size=64), dict(launch_pdl=True),
                                      dict(shared=229 * 1024)])
def test_launches_plain_cuLaunchKernel_cannot_make_stay_in_python(metadata):
    assert native._kernel(_Resolved(SIGNATURE, (1000, 0.5, 2**40, 1, 64), **metadata), (3, 5)) is None


def test_a_signature_that_does_not_match_the_arguments_stays_in_python():
    assert native._kernel(_Resolved(SIGNATURE, (1000, 0.5)), (3, 5)) is None
    assert native._kernel(_Resolved({**SIGNATURE, "half": "fp16"}, (1000, 0.5, 2**40, 1, 64, 1.0)), (3, 5)) is None


def test_a_launch_not_yet_compiled_stays_in_python():
    assert native._kernel(SimpleNamespace(resolved=lambda: None), (0,)) is None


def test_the_extension_builds_and_allocates_a_programs_buffers():
    """Built as on a GPU machine (CPU headers only); a program without launches runs on the
    CPU, so its buffers (strided, zeroed when asked) can be checked here."""
    module = native.extension()
    assert module is not None, "the C++ launcher did not build"
    q = torch.empty(2, 3, 5, 16)
    out, stats = ops._output(q), ops._row_stats(q)
    buffers = [(list(b.size), list(b.stride), str(b.dtype).removeprefix("torch."), zero)
               for b, zero in ((out, False), (stats, True))]
    program = module.Program(buffers, [], [1, 2])
    got_out, got_stats = program.run([q])
    assert got_out.shape == q.shape and got_out.stride() == out.stride and got_out.dtype == q.dtype
    assert got_stats.dtype == torch.float32 and torch.equal(got_stats, torch.zeros(2, 3, 5))


def test_a_launcher_that_cannot_be_built_leaves_the_calls_in_python(monkeypatch):
    """No compiler: one warning line naming the fix, and nothing registered."""
    import torch.utils.cpp_extension

    def no_compiler(**_):
        raise RuntimeError("Ninja is required to load C++ extensions\n(more lines)")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setattr(native, "_extension", None)
    monkeypatch.setattr(native, "enabled", lambda: True)
    with pytest.warns(UserWarning, match=r"could not be built \(Ninja is required to load C\+\+ extensions\).*"
                                         r"Install a C\+\+ compiler and ninja"):
        assert native.extension() is None
    program = ops.Program((), (), ())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tried once: no second build, no second warning
        native.register(program)
        assert native.extension() is None
    assert id(program) not in native._CALLS


def test_a_program_is_packed_once_and_a_refused_one_stays_refused():
    module = native.extension()
    q = torch.empty(1, 2, 8, 16)
    good = ops.Program((ops._output(q),), ((_Resolved(SIGNATURE, (8, 0.5, 2**40, 1, 64)), (0, 1)),), (1,))
    refused = ops.Program((), ((_Resolved(SIGNATURE, (8, 0.5, 2**40, 1, 64), num_ctas=2), (0, 1)),), (0,))
    packed = native._packed(module, good)
    assert isinstance(packed, module.Program) and native._packed(module, good) is packed
    assert native._packed(module, refused) is None and id(refused) in native._PACKED


def test_a_packed_program_is_kept_alive_so_its_id_is_not_reused():
    """Calls are looked up by the id of their forward program; a program freed while its
    entry stayed would let a new program with the same id run the old launches."""
    module = native.extension()
    q = torch.empty(1, 2, 8, 16)
    program = ops.Program((ops._output(q),), ((_Resolved(SIGNATURE, (8, 0.5, 2**40, 1, 64)), (0, 1)),), (1,))
    key = id(program)
    native._packed(module, program)
    del program
    assert native._PACKED[key][0] is not None and id(native._PACKED[key][0]) == key
    native.forget()
    assert not native._PACKED and not native._CALLS
