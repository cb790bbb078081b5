from metarl_lightning.policies.actor_critic import ActorCritic, GaussianActor
from metarl_lightning.policies.multihead import MultiHeadActorCritic
from metarl_lightning.policies.recurrent import GRUActorCritic
from metarl_lightning.policies.sac import SACActorCritic

__all__ = ["ActorCritic", "GRUActorCritic", "GaussianActor", "MultiHeadActorCritic", "SACActorCritic"]
