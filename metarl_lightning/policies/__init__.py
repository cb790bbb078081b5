from metarl_lightning.policies.actor_critic import ActorCritic, GaussianActor

__all__ = ["ActorCritic", "GaussianActor"]
