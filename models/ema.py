"""Exponential moving average of parameters with score_sde's semantics and state-dict layout."""

import torch


class ExponentialMovingAverage:
    """Shadow copies of the parameters that require grad, updated as s <- s - (1 - decay) (s - p).

    With warm-up (score_sde default) the decay used at update n is min(decay, (1 + n) / (10 + n)).

    Args:
        parameters: iterable of parameters (e.g. model.parameters()); those with requires_grad are tracked.
        decay: EMA decay in [0, 1].
        use_num_updates: apply the warm-up above.
    """

    def __init__(self, parameters, decay: float, use_num_updates: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.num_updates = 0 if use_num_updates else None
        self.shadow_params = [p.detach().clone() for p in parameters if p.requires_grad]
        self.collected_params = []

    def update(self, parameters):
        """Move the shadow parameters towards the current parameters (call after each optimiser step)."""
        decay = self.decay
        if self.num_updates is not None:
            self.num_updates += 1
            decay = min(decay, (1 + self.num_updates) / (10 + self.num_updates))
        with torch.no_grad():
            for shadow, param in zip(self.shadow_params, _trainable(parameters), strict=True):
                shadow.sub_((1.0 - decay) * (shadow - param))

    def copy_to(self, parameters):
        """Write the shadow values into the parameters that require grad (in order)."""
        with torch.no_grad():
            for shadow, param in zip(self.shadow_params, _trainable(parameters), strict=True):
                param.copy_(shadow)

    def store(self, parameters):
        """Remember the current parameters, e.g. before copy_to for evaluation."""
        self.collected_params = [p.detach().clone() for p in parameters]

    def restore(self, parameters):
        """Put back the parameters remembered by store."""
        with torch.no_grad():
            for saved, param in zip(self.collected_params, parameters, strict=True):
                param.copy_(saved)

    def state_dict(self):
        """{"decay", "num_updates", "shadow_params"}: score_sde's checkpoint entry."""
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow_params": self.shadow_params}

    def load_state_dict(self, state_dict):
        """Load a state_dict written by state_dict (or by score_sde)."""
        self.decay = float(state_dict["decay"])
        self.num_updates = state_dict["num_updates"]
        self.shadow_params = [p.detach().clone() for p in state_dict["shadow_params"]]


def _trainable(parameters):
    return [p for p in parameters if p.requires_grad]
