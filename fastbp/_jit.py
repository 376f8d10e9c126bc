"""``inner``: how the kernels that only compiled code calls are compiled.

Numba compiles every function into a library of its own: its LLVM module, optimised (O3), then
turned into machine code, with two wrappers, one that Python calls (it unboxes each argument from
its Python object and boxes the result) and one that C calls. A caller links its callees' modules
into its own and optimises and emits the whole again (that is how LLVM inlines them). A kernel
that only other compiled functions call never runs its own machine code or wrappers: the drivers
(``_kernels.TRAIN_EPOCHS`` and the like) carry its code in theirs. So ``inner`` compiles such a
kernel

- without wrappers (Numba's ``no_cpython_wrapper``, ``no_cfunc_wrapper``): a first fit of a
  64-64-10 network on digits compiled in 6.5-7.7 s instead of 7.9-9.6 s (float32, an empty cache,
  three rounds alternating with the code before);
- into a library that is only linked (``_LinkedLibrary``): its module gets neither Numba's
  per-function passes nor the module-level O3 nor machine code, all of which its callers redo
  with it inlined. The same first fit: 5.2 s instead of 6.9-7.1 (float64 4.8 instead of 6.2;
  two rounds alternating with the code before), with the per-function passes still run.
  Such a library has no machine code to write to Numba's disk cache, so these kernels are not
  cached; the drivers are, with their callees' code inside them, so a warm start compiles
  nothing.
- with its ``prange`` loops (``parallel=True``) likewise: Numba compiles each loop's body as a
  function of its own (a "gufunc") with two wrappers around it, and gives each of the three
  libraries O3 and machine code of its own, over the same code each time; inside an inner kernel
  they are only linked (``_parfor_libraries``). A first fit of the digits network on sparse
  input (the sparse first layer's two loops), medians of six rounds alternating with the code
  before: 6.63 s instead of 7.41 (float32), 6.21 instead of 6.99 (float64).

Such a function must never be entered from Python: it has no machine code. So ``inner`` hands out
a dispatcher whose call from Python goes to a twin compiled the ordinary way, with the wrappers:
the same function under its own name (so the two never share Numba's cache files), compiled on the
first call from Python only (the tests, the benchmarks, ``Network.gradients``). Same code, same
bits.
"""
import types

from llvmlite import binding as ll
from llvmlite import ir
from numba import njit
from numba.core import config
from numba.core.codegen import JITCPUCodegen, JITCodeLibrary
from numba.core.compiler import CompilerBase, DefaultPassBuilder
from numba.core.compiler_lock import require_global_compiler_lock
from numba.core.compiler_machinery import AnalysisPass, register_pass
from numba.core.registry import CPUDispatcher
from numba.core.runtime.nrtopt import remove_redundant_nrt_refct
from numba.core.typed_passes import AnnotateTypes, NativeParforLowering

from . import _compiling


# LLVM's tuning for Intel's AVX-512 server cores (Skylake-SP, Cascade Lake, ...) vectorises loops
# 256 bits wide ("prefer-256-bit"), for the clock those cores drop to under 512-bit work. The
# activation passes are arithmetic-bound (vmath's polynomials): 512 bits wide, a sigmoid over
# 64 x 1024 float32 values ran at 0.53-0.56 ns a value instead of 0.69-1.09 (np.tanh: 0.52-0.81),
# float64 1.35-1.65 instead of 2.07-2.15, on a Cascade Lake, one thread (measured). So the
# functions marked ``inner(wide=True)`` ask LLVM for 512; a core without AVX-512 ignores that.
# Only those: with every kernel wide, the fused XOR-sized loop's passes over 16 values fell to
# the scalar remainder of 64-value steps (W1 13-15% slower); a user's own functions are left as
# Numba makes them. Vector width never changes a result: no kernel lets LLVM reorder a sum.
_add_ir_module = JITCodeLibrary.add_ir_module


def _add_ir_module_wide(library, ir_module):
    if getattr(_compiling.compiling(), "_wide", False):  # the function whose code this is
        for fn in ir_module.functions:
            if not fn.is_declaration:  # llvmlite's add() knows no attribute with a value
                set.add(fn.attributes, '"prefer-vector-width"="512"')
    return _add_ir_module(library, ir_module)


JITCodeLibrary.add_ir_module = _add_ir_module_wide

# Numba's name for a function's environment pointer (``FunctionDescriptor.env_name``)
_ENV_PREFIX = "_ZN08NumbaEnv"


class _LinkedLibrary(JITCodeLibrary):
    """A library whose module is only ever linked into its callers' (see the module's docstring).

    ``finalize`` links the modules of its own callees (as Numba's does) and stops there: no
    module-level optimisation and no machine code, which the callers' libraries produce with this
    code in them. The one thing Numba asks of its machine code, the address of the function's
    environment pointer (``set_env``, at the end of lowering), is given by a module holding just
    those globals: nopython code reads its environment only to box Python objects (object mode,
    exceptions carrying runtime values), which the kernels never do. Should a Numba name that
    pointer otherwise, the library is finalised the ordinary way (slower to compile, as before)."""

    _linked_only = True
    _hand_written = False  # True: IR of Numba's own making, with no environment to provide

    def finalize(self):
        require_global_compiler_lock()
        self._raise_if_finalized()
        envs = [gv.name for gv in self._final_module.global_variables
                if gv.name.startswith(_ENV_PREFIX) and not gv.is_declaration]
        if not envs and not self._hand_written:
            # not the Numba this was written for: finalised the ordinary way
            self._linked_only = False
            return super().finalize()
        for library in dict.fromkeys(self._linking_libraries):
            self._reload_init.update(library._reload_init)
            self._final_module.link_in(library._get_module_for_linking(), preserve=True)
        if envs:
            module = self._codegen._create_empty_module(self.name + ".environment")
            for name in envs:
                env = ir.GlobalVariable(module, ir.IntType(8).as_pointer(), name)
                env.linkage = "common"
                env.initializer = ir.Constant(env.type.pointee, None)
            self._codegen._add_module(ll.parse_assembly(str(module)))
            self._codegen._engine.finalize_object()
        self._finalized = True

    def add_llvm_module(self, ll_module):
        # without Numba's per-function passes first: the callers' O3 runs them over this code in
        # their module anyway (a cold digits fit: 0.3 s of such passes instead of 0.7, and the
        # same O3 time)
        if not config.LLVM_REFPRUNE_PASS:  # as Numba's own
            ll_module = remove_redundant_nrt_refct(ll_module)
        self._final_module.link_in(ll_module)

    def get_pointer_to_function(self, name):
        self._ensure_finalized()
        if not self._linked_only:
            return super().get_pointer_to_function(name)
        return 0  # no machine code: a call from Python goes to the twin


class _LinkedWrapperLibrary(_LinkedLibrary):
    """The library of one of the two wrappers Numba writes around a ``prange`` loop's body, made
    while an ``inner`` kernel compiled ``parallel=True`` is lowered: only linked, as the kernel's
    own and the body's (see ``_parfor_libraries``). IR that Numba writes by hand: it has no
    environment to provide."""

    _hand_written = True


# Numba's names for the libraries of a prange loop's body and of its two wrappers
_PARFOR_BODY = "__numba_parfor_gufunc_"
_PARFOR_WRAPPERS = ("parallelgufuncwrapper", "<numba.np.ufunc.wrappers._GufuncWrapper")
_parfor_lowering = [0]  # inner kernels being lowered with their prange loops
_create_library = JITCPUCodegen.create_library


def _parfor_libraries(codegen, name, **kwargs):
    """``JITCPUCodegen.create_library``, but while an inner kernel's prange loops are lowered,
    their bodies' libraries are ``_LinkedLibrary`` and their wrappers' ``_LinkedWrapperLibrary``
    (see the module's docstring). Should a compile fail between the two passes that mark the
    window, later loops get such libraries too: their O3 and machine code are then made only by
    the library that links them (as for an inner kernel), which never changes a result."""
    if _parfor_lowering[0]:
        if name.startswith(_PARFOR_BODY):
            return _LinkedLibrary(codegen, name, **kwargs)
        if name.startswith(_PARFOR_WRAPPERS):
            return _LinkedWrapperLibrary(codegen, name, **kwargs)
    return _create_library(codegen, name, **kwargs)


JITCPUCodegen.create_library = _parfor_libraries


def _window_pass(name, step):
    """A pass that adds ``step`` to ``_parfor_lowering`` (the window of ``_parfor_libraries``)."""
    class WindowPass(AnalysisPass):
        _name = name

        def __init__(self):
            AnalysisPass.__init__(self)

        def run_pass(self, state):
            _parfor_lowering[0] += step
            return False
    return register_pass(mutates_CFG=False, analysis_only=True)(WindowPass)


_ParforLoweringStarts = _window_pass("fastbp_parfor_lowering_starts", 1)
_ParforLoweringEnds = _window_pass("fastbp_parfor_lowering_ends", -1)


@register_pass(mutates_CFG=False, analysis_only=True)
class _UseLinkedLibrary(AnalysisPass):
    """Before lowering: the function is lowered into a ``_LinkedLibrary``."""

    _name = "fastbp_use_linked_library"

    def __init__(self):
        AnalysisPass.__init__(self)

    def run_pass(self, state):
        if state.library is None:
            state.library = _LinkedLibrary(state.targetctx.codegen(), state.func_id.func_qualname)
        return False


class _InnerCompiler(CompilerBase):
    """Numba's nopython pipeline (with its parallel passes when asked for), lowering into a
    ``_LinkedLibrary``."""

    def define_pipelines(self):
        pm = DefaultPassBuilder.define_nopython_pipeline(self.state)
        pm.add_pass_after(_UseLinkedLibrary, AnnotateTypes)
        if self.state.flags.auto_parallel.enabled:
            pm.add_pass_after(_ParforLoweringStarts, _UseLinkedLibrary)
            pm.add_pass_after(_ParforLoweringEnds, NativeParforLowering)
        pm.finalize()
        return [pm]


# How ``inner`` compiles a kernel into a ``_LinkedLibrary`` (less the Python wrapper, which an
# overload's implementation never has); also ``@overload(f, jit_options=LINKED)`` for an
# overload's implementation, which only compiled code calls (Numba's default for one: O3 and
# machine code of its own, and the C wrapper)
LINKED = dict(no_cfunc_wrapper=True, pipeline_class=_InnerCompiler)


class _Inner(CPUDispatcher):
    """A dispatcher compiled for compiled callers only; Python calls its twin."""

    def __call__(self, *args, **kwargs):
        twin = self.__dict__.get("_twin")
        if twin is None:
            twin = self._twin = _twin(self)
        return twin(*args, **kwargs)


_NOT_FOR_TWIN = frozenset(("no_cpython_wrapper", "no_cfunc_wrapper", "nopython"))


def _twin(disp):
    options = {k: v for k, v in disp.targetoptions.items() if k not in _NOT_FOR_TWIN}
    return njit(cache=True, **options)(renamed(disp.py_func, "__python"))


def renamed(f, suffix):
    """A copy of the plain function f named f's qualified name + suffix, for compiling f a second
    way: Numba names its cache files after the qualified name and does not key them on the
    compile options, so two dispatchers of one function would read each other's."""
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    g.__qualname__ = f.__qualname__ + suffix
    g.__module__, g.__doc__, g.__kwdefaults__ = f.__module__, f.__doc__, f.__kwdefaults__
    return g


def distinct(*constants):
    """``@distinct(c, ...)`` under ``@njit`` or ``@inner``, for a function a factory makes per
    constant (a closure): compiled as a copy named after the constants (``renamed``). Numba names
    a function's machine code after its qualified name and a counter of the process that compiles
    it, so two closures of one factory, compiled in two processes and kept in the disk cache, can
    get the same symbol; loaded into one process, the calls of both went to the code loaded first
    (found with the row chunks: a cross-entropy fit ran the bce loss's kernels, its loss -1e16,
    after a bce fit loaded from the cache; the drivers' cached code carried such symbols too,
    ``batch_gradients_layers`` among them)."""
    suffix = "_" + "_".join(str(c) for c in constants)
    return lambda f: renamed(f, suffix)


def inner(optimised_alone=False, wide=False, **options):
    """``@inner(**options)``: ``@njit(**options)`` for a function that only compiled code calls,
    compiled without Numba's wrappers into a library that its callers link (see the module's
    docstring). ``optimised_alone=True``: compiled (and cached) as Numba compiles, O3 on its own
    module before its callers inline it, for code whose shape the optimiser must not revisit in
    its callers' context (``_pcg.permutation``, whose branch-free draws a shuffled XOR epoch
    needs: linked only, it ran 15% slower, measured). ``wide=True``: loops 512 bits wide where
    the core has AVX-512 (see ``_add_ir_module_wide``). With Numba's JIT off
    (``NUMBA_DISABLE_JIT=1``) the plain function."""
    def decorate(f):
        f._wide = wide
        how = dict(cache=True, no_cfunc_wrapper=True) if optimised_alone else LINKED
        disp = njit(no_cpython_wrapper=True, **how, **options)(f)
        if not isinstance(disp, CPUDispatcher):  # the JIT is off
            return disp
        disp.__class__ = _Inner
        return disp
    return decorate
