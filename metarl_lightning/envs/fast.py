"""Fast, bit-exact subclasses of the 50 Meta-World v3 env classes (issue 13).

A stock `env.step` spends ~75-90% of its time in Python around MuJoCo's `mj_step`: walking
`data.contact` in list comprehensions (`touching_object`), named `data.body/site/geom(...)`
lookups, scipy `Rotation.from_matrix` for object quaternions, and numpy's Python-level dispatch on
3-vectors (`linalg.norm`, `hstack`, `clip`) and scalars (`reward_utils.tolerance`). For each stock
class C this module defines `FastC(C)` (module-level, so env thunks pickle) that

1. overrides the hot `SawyerXYZEnv` methods every env uses (`_FastSawyerMethods` below): one scan
   of `data.contact.geom1/geom2` as int lists instead of two lists of MjContact structs, body/site
   ids and MjData array views cached, the 18-dim observation, `set_xyz_action`, the caging reward
   and `step` without hstack/split/clip wrappers;
2. runs Meta-World's *own* code for everything else (each env's `compute_reward`, `reset_model`,
   ... and the remaining base methods), re-bound to a copy of its module globals in which `np`,
   `reward_utils` and `Rotation` are the exact stand-ins of `fast_numerics`. No Meta-World code
   is copied or patched in place: the stock classes stay stock (the test steps both side by side).

Every replacement performs the same floating-point operations in the same order, so obs,
rewards and infos are bit-identical (tests/test_fast_step.py, all 50 envs). Verified against
metaworld==3.1.1 only: on any other version `fast_class` returns the stock class with one warning.
"""

from __future__ import annotations

import importlib.metadata
import types
import warnings
from typing import Any

import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.sawyer_xyz_env import SawyerMocapBase, SawyerXYZEnv
from metaworld.utils import reward_utils

from metarl_lightning.envs.fast_numerics import FAST_GLOBALS, norm, tolerance, uclip

VERIFIED_METAWORLD = "3.1.1"
METAWORLD_VERSION = importlib.metadata.version("metaworld")
ENABLED = METAWORLD_VERSION == VERIFIED_METAWORLD

_MOCAP_QUAT = np.array([1, 0, 1, 0])  # SawyerXYZEnv.set_xyz_action's constant (int64, cast on copy)
_F32, _F32_M1, _F32_P1 = np.dtype(np.float32), np.float32(-1), np.float32(1)
_ZEROS3 = np.zeros(3)  # the hidden goal; concatenated (copied), never written
_mj_step = mujoco.mj_step
_mj_forward = mujoco.mj_forward
_mj_rne_post = mujoco.mj_rnePostConstraint
hamacher_product = reward_utils.hamacher_product


# -- 1. re-binding Meta-World's own methods to fast globals ---------------------------------------
_globals_cache: dict[int, dict] = {}


def _fast_globals(g: dict) -> dict | None:
    """A copy of a Meta-World module's globals with the fast stand-ins swapped in (None if the
    module uses none of them). Only names bound to exactly the stock object are swapped."""
    if not g.get("__name__", "").startswith("metaworld"):
        return None
    key = id(g)
    if key not in _globals_cache:
        swaps = {k: fast for k, (stock, fast) in FAST_GLOBALS.items() if g.get(k) is stock}
        _globals_cache[key] = {**g, **swaps} if swaps else None
    return _globals_cache[key]


def _rebind(obj: Any) -> Any:
    """The same function (or property/static/classmethod) with fast globals; `obj` if none apply.
    Closure cells holding Meta-World functions are re-bound too: `assert_task_is_set` wraps
    `evaluate_state`/`step` in a closure."""
    if isinstance(obj, property):
        return property(*(f if f is None else _rebind(f) for f in (obj.fget, obj.fset, obj.fdel)),
                        obj.__doc__)
    if isinstance(obj, (staticmethod, classmethod)):
        return type(obj)(_rebind(obj.__func__))
    if not isinstance(obj, types.FunctionType):
        return obj
    g = _fast_globals(obj.__globals__)
    closure = obj.__closure__
    if closure:
        cells = [c.cell_contents if _filled(c) else None for c in closure]
        new_cells = tuple(
            types.CellType(_rebind(v)) if isinstance(v, types.FunctionType) and _rebind(v) is not v
            else c for c, v in zip(closure, cells))
        if any(a is not b for a, b in zip(new_cells, closure)):
            closure = new_cells
            g = g or obj.__globals__
    if g is None:
        return obj
    f = types.FunctionType(obj.__code__, g, obj.__name__, obj.__defaults__, closure)
    f.__kwdefaults__ = obj.__kwdefaults__
    f.__qualname__, f.__doc__, f.__module__ = obj.__qualname__, obj.__doc__, obj.__module__
    f.__dict__.update(obj.__dict__)
    f.__wrapped__ = obj
    return f


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
        return True
    except ValueError:
        return False


# -- 2. hand-written fast versions of the hot base methods ------------------------------------------
class _Cache:
    """Per-env ids and MjData array views for `_FastSawyerMethods`."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData):
        self.model, self.data = model, data
        self.xpos, self.site_xpos = data.xpos, data.site_xpos
        self.body: dict[str, int] = {}
        self.site: dict[str, int] = {}
        body, site, geom = mujoco.mjtObj.mjOBJ_BODY, mujoco.mjtObj.mjOBJ_SITE, mujoco.mjtObj.mjOBJ_GEOM
        self.hand = self.id(self.body, body, "hand")
        self.right_claw = self.id(self.body, body, "rightclaw")
        self.left_claw = self.id(self.body, body, "leftclaw")
        self.right_ee = self.id(self.site, site, "rightEndEffector")
        self.left_ee = self.id(self.site, site, "leftEndEffector")
        self.left_pad = self.id({}, geom, "leftpad_geom")
        self.right_pad = self.id({}, geom, "rightpad_geom")
        self.obj_geom = mujoco.mj_name2id(model, geom, "objGeom")  # -1: the stock lookup raises

    def id(self, table: dict[str, int], kind: mujoco.mjtObj, name: str) -> int:
        """`data.body(name).id` etc., resolved once (mj_name2id), KeyError like the stock lookup."""
        i = table.get(name)
        if i is None:
            i = mujoco.mj_name2id(self.model, kind, name)
            if i < 0:
                raise KeyError(f"Invalid name '{name}'.")
            table[name] = i
        return i


class _FastSawyerMethods:
    """Exact replacements for SawyerMocapBase/SawyerXYZEnv/MujocoEnv methods (metaworld 3.1.1,
    gymnasium 1.x MujocoEnv). Each docstring names what it replaces; the arithmetic is the stock
    arithmetic, only the Python around it is shorter. Mixed into every Fast class."""

    def _fast_cache(self) -> _Cache:
        """Ids of the names the base methods look up every step, and MjData's arrays (views
        into buffers MuJoCo allocates once per MjData). Built on first use, dropped on pickling."""
        c = self.__dict__.get("_fast")
        if c is None or c.data is not self.data:
            c = self.__dict__["_fast"] = _Cache(self.model, self.data)
        return c

    def get_body_com(self, body_name: str) -> np.ndarray:
        """MujocoEnv.get_body_com: `data.body(name).xpos`, the same (3,) view into data.xpos."""
        c = self._fast_cache()
        return c.xpos[c.id(c.body, mujoco.mjtObj.mjOBJ_BODY, body_name)]

    def get_endeff_pos(self) -> np.ndarray:
        c = self._fast_cache()
        return c.xpos[c.hand]

    @property
    def tcp_center(self) -> np.ndarray:
        c = self._fast_cache()
        return (c.site_xpos[c.right_ee] + c.site_xpos[c.left_ee]) / 2.0

    def _get_site_pos(self, site_name: str) -> np.ndarray:
        c = self._fast_cache()
        return c.site_xpos[c.id(c.site, mujoco.mjtObj.mjOBJ_SITE, site_name)].copy()

    def _set_pos_site(self, name: str, pos: np.ndarray) -> None:
        assert isinstance(pos, np.ndarray)
        assert pos.ndim == 1
        c = self._fast_cache()
        c.site_xpos[c.id(c.site, mujoco.mjtObj.mjOBJ_SITE, name)] = pos[:3]

    def _get_id_main_object(self) -> int:
        i = self._fast_cache().obj_geom
        return i if i >= 0 else self.data.geom("objGeom").id  # (raises, as stock)

    def __getstate__(self):
        state = SawyerXYZEnv.__getstate__(self)
        state["state"].pop("_fast", None)  # MjData views; rebuilt after unpickling
        return state

    def touching_object(self, object_geom_id: int) -> bool:
        """SawyerXYZEnv.touching_object: both pads' summed contact normal force with the object is
        positive. The stock code builds two lists of MjContact structs per call (one Python object
        per contact and field read); here the geom ids come out as two int lists in one call each
        and are scanned once. Forces are added in contact order starting from int 0, as the stock
        `sum` does. (Numpy masks over `contact.geom1/geom2` were 4x slower at the ~4-10 contacts
        these scenes have.)"""
        data = self.data
        con = data.contact
        c = self._fast_cache()
        left, right = c.left_pad, c.right_pad
        left_force = right_force = 0
        efc = addr = None
        for k, (a, b) in enumerate(zip(con.geom1.tolist(), con.geom2.tolist())):
            if a == object_geom_id or b == object_geom_id:
                if efc is None:
                    efc, addr = data.efc_force, con.efc_address
                if a == left or b == left:
                    left_force = left_force + efc[addr[k]]
                if a == right or b == right:
                    right_force = right_force + efc[addr[k]]
        return 0 < left_force and 0 < right_force

    def _gripper_caging_reward(self, action, obj_pos, obj_radius, pad_success_thresh,
                               object_reach_radius, xz_thresh, desired_gripper_effort=1.0,
                               high_density=False, medium_density=False) -> float:
        """SawyerXYZEnv._gripper_caging_reward with the 2-element y arrays (hstack, abs, minus)
        done on scalars (the same IEEE ops, elementwise) and the x-z vectors built directly; the
        norms stay numpy dot products. Non-float64 positions take the stock code."""
        init, tcp0 = self.obj_init_pos, self.init_tcp
        if not (type(obj_pos) is np.ndarray and obj_pos.dtype == np.float64
                and type(init) is np.ndarray and init.dtype == np.float64
                and type(tcp0) is np.ndarray and tcp0.dtype == np.float64):
            return _STOCK_CAGING(self, action, obj_pos, obj_radius, pad_success_thresh,
                                 object_reach_radius, xz_thresh, desired_gripper_effort,
                                 high_density, medium_density)
        if high_density and medium_density:
            raise ValueError("Can only be either high_density or medium_density")
        c = self._fast_cache()
        left_y = float(c.xpos[c.id(c.body, mujoco.mjtObj.mjOBJ_BODY, "leftpad"), 1])
        right_y = float(c.xpos[c.id(c.body, mujoco.mjtObj.mjOBJ_BODY, "rightpad"), 1])
        o0, o1, o2 = obj_pos.tolist()
        i0, i1, i2 = init.tolist()
        caging_lr = [
            tolerance(abs(pad_y - o1), bounds=(obj_radius, pad_success_thresh),
                      margin=abs(abs(pad_y - i1) - pad_success_thresh), sigmoid="long_tail")
            for pad_y in (left_y, right_y)
        ]
        caging_y = hamacher_product(*caging_lr)
        tcp = self.tcp_center
        t0, _, t2 = tcp0.tolist()
        caging_xz_margin = norm(np.array((i0 - t0, i2 - t2)))
        caging_xz_margin -= xz_thresh
        p0, _, p2 = tcp.tolist()
        caging_xz = tolerance(norm(np.array((p0 - o0, p2 - o2))), bounds=(0, xz_thresh),
                              margin=caging_xz_margin, sigmoid="long_tail")
        gripper_closed = min(max(0, action[-1]), desired_gripper_effort) / desired_gripper_effort
        caging = hamacher_product(caging_y, float(caging_xz))
        gripping = gripper_closed if caging > 0.97 else 0.0
        caging_and_gripping = hamacher_product(caging, gripping)
        if high_density:
            caging_and_gripping = (caging_and_gripping + caging) / 2
        if medium_density:
            tcp_to_obj = norm(obj_pos - tcp)
            tcp_to_obj_init = norm(init - tcp0)
            reach = tolerance(tcp_to_obj, bounds=(0, object_reach_radius),
                              margin=abs(tcp_to_obj_init - object_reach_radius), sigmoid="long_tail")
            caging_and_gripping = (caging_and_gripping + float(reach)) / 2
        return caging_and_gripping

    def _get_curr_obs_combined_no_goal(self) -> np.ndarray:
        """hand xyz, gripper opening, then (pos, quat) per object padded to 14: the stock layout,
        written into one preallocated array instead of split/hstack."""
        c = self._fast_cache()
        xpos = c.xpos
        pos_hand = xpos[c.hand]
        gripper = norm(xpos[c.right_claw] - xpos[c.left_claw]) / 0.1
        obj_pos = self._get_pos_objects()
        assert len(obj_pos) % 3 == 0
        obj_quat = self._get_quat_objects()
        assert len(obj_quat) % 4 == 0
        n = len(obj_pos) // 3
        if len(obj_quat) // 4 != n or 7 * n > self._obs_obj_max_len:
            return SawyerXYZEnv._get_curr_obs_combined_no_goal(self)  # stock (it raises)
        out = np.zeros(4 + self._obs_obj_max_len)
        out[:3] = pos_hand
        out[3] = uclip(gripper, 0.0, 1.0)
        for i in range(n):
            out[4 + 7 * i: 7 + 7 * i] = obj_pos[3 * i: 3 * i + 3]
            out[7 + 7 * i: 11 + 7 * i] = obj_quat[4 * i: 4 * i + 4]
        return out

    def _get_obs(self) -> np.ndarray:
        pos_goal = self._get_pos_goal()
        if self._partially_observable:
            pos_goal = (_ZEROS3 if pos_goal.shape == (3,) and pos_goal.dtype == np.float64
                        else np.zeros_like(pos_goal))
        curr_obs = self._get_curr_obs_combined_no_goal()
        obs = np.concatenate((curr_obs, self._prev_obs, pos_goal))  # = np.hstack of 1-D arrays
        self._prev_obs = curr_obs
        return obs

    def set_xyz_action(self, action: np.ndarray) -> None:
        """The stock ufuncs (clip, scale in the action's dtype, add, clip to the mocap box), minus
        the np.clip wrapper, the int-to-float32 bound conversion and a (1, 3) reshape that only
        broadcasts."""
        if type(action) is np.ndarray and action.dtype is _F32:
            action = uclip(action, _F32_M1, _F32_P1)  # = np.clip(action, -1, 1) on float32
        else:
            action = uclip(action, -1, 1)
        pos_delta = action * self.action_scale
        data = self.data
        new_mocap_pos = data.mocap_pos + pos_delta
        row = new_mocap_pos[0]
        uclip(row, self.mocap_low, self.mocap_high, out=row)
        data.mocap_pos = new_mocap_pos
        data.mocap_quat = _MOCAP_QUAT

    def step(self, action):
        """SawyerXYZEnv.step with MujocoEnv.do_simulation inlined (same calls, same order)."""
        if not self._set_task_called:
            raise RuntimeError("You must call env.set_task before using env.step")
        assert len(action) == 4, f"Actions should be size 4, got {len(action)}"
        self.set_xyz_action(action[:3])
        if self.curr_path_length >= self.max_path_length:
            raise ValueError("You must reset the env manually once truncate==True")
        model, data = self.model, self.data
        if model.nu != 2:
            raise ValueError(f"Action dimension mismatch. Expected {(model.nu,)}, found (2,)")
        grip = action[-1]
        data.ctrl[:] = (grip, -grip)
        _mj_step(model, data, nstep=self.frame_skip)
        _mj_rne_post(model, data)  # gymnasium's _step_mujoco_simulation does it; kept for state parity
        self.curr_path_length += 1
        for site in self._target_site_config:
            self._set_pos_site(*site)
        if self._did_see_sim_exception:
            return _unstable_step(self)
        _mj_forward(model, data)
        space = self.sawyer_observation_space
        obs = uclip(self._get_obs(), space.low, space.high, dtype=np.float64)
        self._last_stable_obs = obs
        reward, info = self.evaluate_state(obs, action)
        truncate = self.curr_path_length == self.max_path_length
        return np.array(obs, dtype=np.float64), reward, False, truncate, info


def _unstable_step(env):
    """The stock step's branch after a simulator exception (never set by v3 code; kept verbatim)."""
    assert env._last_stable_obs is not None
    return (env._last_stable_obs, 0.0, False, False,
            {"success": False, "near_object": 0.0, "grasp_success": False, "grasp_reward": 0.0,
             "in_place_reward": 0.0, "obj_to_target": 0.0, "unscaled_reward": 0.0})


_STOCK_CAGING = _rebind(SawyerXYZEnv._gripper_caging_reward)


def _base_namespace() -> dict[str, Any]:
    """SawyerMocapBase + SawyerXYZEnv methods re-bound to fast globals, then the hand-written ones."""
    ns: dict[str, Any] = {}
    for klass in (SawyerMocapBase, SawyerXYZEnv):
        for name, attr in vars(klass).items():
            if not name.startswith("__"):
                new = _rebind(attr)
                if new is not attr:
                    ns[name] = new
    ns.update({k: v for k, v in vars(_FastSawyerMethods).items()
               if not k.startswith("__") or k == "__getstate__"})
    return ns


_BASE_NS = _base_namespace()


def _make_fast_class(cls: type[SawyerXYZEnv]) -> type[SawyerXYZEnv]:
    ns = dict(_BASE_NS)
    # The env's own methods (and any between it and SawyerXYZEnv) win over the base ones, as in
    # the stock MRO; they run re-bound to fast globals.
    for klass in reversed(cls.__mro__):
        if issubclass(klass, SawyerXYZEnv) and klass is not SawyerXYZEnv:
            for name, attr in vars(klass).items():
                if name.startswith("__"):
                    continue
                new = _rebind(attr)
                if new is not attr:
                    ns[name] = new
                else:
                    ns.pop(name, None)  # inherited from cls itself

    def __init__(self, *args, **kwargs):
        cls.__init__(self, *args, **kwargs)
        self.task_name = cls.__name__  # metaworld.evaluation maps class names to task names

    name = f"Fast{cls.__name__}"
    ns.update(__init__=__init__, __module__=__name__, __qualname__=name,
              __doc__=f"Bit-exact fast {cls.__name__} (metarl_lightning.envs.fast).")
    return type(name, (cls,), ns)


FAST_CLASSES: dict[type, type] = {}
if ENABLED:
    for _cls in ALL_V3_ENVIRONMENTS.values():
        _fast = _make_fast_class(_cls)
        globals()[_fast.__name__] = _fast  # module-level name: pickled thunks find it
        FAST_CLASSES[_cls] = _fast

_warned = False


def fast_class(env_cls: type) -> type:
    """The fast twin of a stock Meta-World v3 env class; the class itself (with one warning) on a
    Meta-World version other than the verified one, or for a class it does not know."""
    global _warned
    if not ENABLED and not _warned:
        warnings.warn(f"metarl_lightning fast env stepping was verified on metaworld=="
                      f"{VERIFIED_METAWORLD}, found {METAWORLD_VERSION}: using the stock envs "
                      "(set benchmark.fast_step=false to silence)", stacklevel=2)
        _warned = True
    return FAST_CLASSES.get(env_cls, env_cls)
