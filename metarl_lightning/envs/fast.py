"""Fast, bit-exact subclasses of the 50 Meta-World v3 env classes (issue 13).

A stock `env.step` spends ~75-90% of its time in Python around MuJoCo's `mj_step`: walking
`data.contact` in list comprehensions (`touching_object`), named `data.body/site/geom(...)`
lookups, scipy `Rotation.from_matrix` for object quaternions, and numpy's Python-level dispatch on
3-vectors (`linalg.norm`, `hstack`, `clip`) and scalars (`reward_utils.tolerance`). For each stock
class C this module defines `FastC(C)` (module-level, so env thunks pickle) that

1. overrides the hot `SawyerXYZEnv` methods every env uses (`_FastSawyerMethods` below): contacts
   filtered with array masks over `data.contact.geom1/geom2`, body/site ids cached per name, the
   18-dim observation and `step` assembled without hstack/split/clip wrappers;
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

from metarl_lightning.envs.fast_numerics import FAST_GLOBALS, norm, uclip

VERIFIED_METAWORLD = "3.1.1"
METAWORLD_VERSION = importlib.metadata.version("metaworld")
ENABLED = METAWORLD_VERSION == VERIFIED_METAWORLD

_MOCAP_QUAT = np.array([1, 0, 1, 0])  # SawyerXYZEnv.set_xyz_action's constant (int64, cast on copy)
_mj_step = mujoco.mj_step
_mj_forward = mujoco.mj_forward
_mj_rne_post = mujoco.mj_rnePostConstraint


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
class _FastSawyerMethods:
    """Exact replacements for SawyerMocapBase/SawyerXYZEnv/MujocoEnv methods (metaworld 3.1.1,
    gymnasium 1.x MujocoEnv). Each docstring names what it replaces; the arithmetic is the stock
    arithmetic, only the Python around it is shorter. Mixed into every Fast class."""

    def _fast_id(self, kind: mujoco.mjtObj, name: str) -> int:
        """Cached `mj_name2id`: what `data.body(name)` / `data.site(name)` resolve on every call."""
        try:
            ids = self.__dict__["_fast_ids"]
        except KeyError:
            ids = self.__dict__["_fast_ids"] = {}
        key = (kind, name)
        i = ids.get(key)
        if i is None:
            i = mujoco.mj_name2id(self.model, kind, name)
            if i < 0:  # the stock accessor's KeyError
                raise KeyError(f"Invalid name '{name}'. Valid names: see the model")
            ids[key] = i
        return i

    def get_body_com(self, body_name: str) -> np.ndarray:
        """MujocoEnv.get_body_com: `data.body(name).xpos`, the same (3,) view into data.xpos."""
        return self.data.xpos[self._fast_id(mujoco.mjtObj.mjOBJ_BODY, body_name)]

    def get_endeff_pos(self) -> np.ndarray:
        return self.data.xpos[self._fast_id(mujoco.mjtObj.mjOBJ_BODY, "hand")]

    @property
    def tcp_center(self) -> np.ndarray:
        sx = self.data.site_xpos
        return (sx[self._fast_id(mujoco.mjtObj.mjOBJ_SITE, "rightEndEffector")]
                + sx[self._fast_id(mujoco.mjtObj.mjOBJ_SITE, "leftEndEffector")]) / 2.0

    def _get_site_pos(self, site_name: str) -> np.ndarray:
        return self.data.site_xpos[self._fast_id(mujoco.mjtObj.mjOBJ_SITE, site_name)].copy()

    def _set_pos_site(self, name: str, pos: np.ndarray) -> None:
        assert isinstance(pos, np.ndarray)
        assert pos.ndim == 1
        self.data.site_xpos[self._fast_id(mujoco.mjtObj.mjOBJ_SITE, name)] = pos[:3]

    def _get_id_main_object(self) -> int:
        return self._fast_id(mujoco.mjtObj.mjOBJ_GEOM, "objGeom")

    def touching_object(self, object_geom_id: int) -> bool:
        """SawyerXYZEnv.touching_object: both pads' summed contact normal force with the object is
        positive. The stock code walks `data.contact` twice in Python; here array masks pick the
        same contacts, and the forces are summed by Python's `sum` in contact order, as stock."""
        data = self.data
        con = data.contact
        g1, g2 = con.geom1, con.geom2
        on_obj = (g1 == object_geom_id) | (g2 == object_geom_id)
        if not on_obj.any():
            return False  # stock: 0 < sum([]) == 0 -> False
        left = self._fast_id(mujoco.mjtObj.mjOBJ_GEOM, "leftpad_geom")
        right = self._fast_id(mujoco.mjtObj.mjOBJ_GEOM, "rightpad_geom")
        efc, addr = data.efc_force, con.efc_address
        left_force = sum(efc[a] for a in addr[on_obj & ((g1 == left) | (g2 == left))].tolist())
        right_force = sum(efc[a] for a in addr[on_obj & ((g1 == right) | (g2 == right))].tolist())
        return 0 < left_force and 0 < right_force

    def _get_curr_obs_combined_no_goal(self) -> np.ndarray:
        """hand xyz, gripper opening, then (pos, quat) per object padded to 14: the stock layout,
        written into one preallocated array instead of split/hstack."""
        pos_hand = self.get_endeff_pos()
        xpos = self.data.xpos
        gripper = norm(xpos[self._fast_id(mujoco.mjtObj.mjOBJ_BODY, "rightclaw")]
                       - xpos[self._fast_id(mujoco.mjtObj.mjOBJ_BODY, "leftclaw")]) / 0.1
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
            pos_goal = np.zeros_like(pos_goal)
        curr_obs = self._get_curr_obs_combined_no_goal()
        obs = np.concatenate((curr_obs, self._prev_obs, pos_goal))  # = np.hstack of 1-D arrays
        self._prev_obs = curr_obs
        return obs

    def set_xyz_action(self, action: np.ndarray) -> None:
        """The stock ufuncs (clip, scale in the action's dtype, add, clip to the mocap box)."""
        action = uclip(action, -1, 1)
        pos_delta = action * self.action_scale
        data = self.data
        new_mocap_pos = data.mocap_pos + pos_delta[None]
        new_mocap_pos[0, :] = uclip(new_mocap_pos[0, :], self.mocap_low, self.mocap_high)
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


def _base_namespace() -> dict[str, Any]:
    """SawyerMocapBase + SawyerXYZEnv methods re-bound to fast globals, then the hand-written ones."""
    ns: dict[str, Any] = {}
    for klass in (SawyerMocapBase, SawyerXYZEnv):
        for name, attr in vars(klass).items():
            if not name.startswith("__"):
                new = _rebind(attr)
                if new is not attr:
                    ns[name] = new
    ns.update({k: v for k, v in vars(_FastSawyerMethods).items() if not k.startswith("__")})
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
