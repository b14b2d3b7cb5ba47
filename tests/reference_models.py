"""Float64 models built on the reference functions (cnorm.slow, imported through norms.py):
the float64 results of float32 inputs (accuracy tests) and the state machines of the
BatchNorm and InstanceNorm modules (module tests)."""

import numpy as np
from norms import EPS, reference

# ----------------------------------------------------------------- float64 results of float32 inputs


def ref_batch_stats(x):
    """float64 (mean, biased var) per channel of the float32 input."""
    return reference.batch_norm_stats(x.astype(np.float64))


def bn_train_ref(x, w, b, eps=1e-5):
    return reference.batch_norm_forward(x.astype(np.float64), w, b, None, None, True, 0.1, eps)[0]


def bn_eval_ref(x, w, b, rm, rv, eps=1e-5):
    return reference.batch_norm_forward(x.astype(np.float64), w, b, rm, rv, False, 0.1, eps)[0]


def ln_ref(x, ns, w, b, eps=1e-5):
    return reference.layer_norm_forward(x.astype(np.float64), ns, w, b, eps)[0]


def bn_grad_ref(dy, x, w, eps=1e-5, training=True, rm=None, rv=None):
    x64 = x.astype(np.float64)
    if training:
        mean, var = reference.batch_norm_stats(x64)
    else:
        mean, var = np.asarray(rm, np.float64), np.asarray(rv, np.float64)
    return reference.batch_norm_backward(dy, x64, w, mean, 1.0 / np.sqrt(var + eps), training)


# ----------------------------------------------------------------- the modules' state machines


class RefBatchNorm:
    """Pure-NumPy model of a torch BatchNorm module's state machine."""

    def __init__(
        self,
        C,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        bias=True,
        weight=None,
        bias_value=None,
    ):
        self.eps, self.momentum = eps, momentum
        self.training = True
        self.weight = (np.ones(C) if weight is None else np.array(weight, np.float64)) if affine else None
        self.bias = None
        if affine and bias:
            self.bias = np.zeros(C) if bias_value is None else np.array(bias_value, np.float64)
        self.track = track_running_stats
        self.running_mean = np.zeros(C) if track_running_stats else None
        self.running_var = np.ones(C) if track_running_stats else None
        self.num_batches_tracked = 0 if track_running_stats else None
        self.weight_grad = self.bias_grad = None

    def forward(self, x):
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track:
            self.num_batches_tracked += 1
            if self.momentum is None:
                factor = 1.0 / self.num_batches_tracked
        use_batch = self.training or self.running_mean is None
        rm = self.running_mean if (not self.training or self.track) else None
        rv = self.running_var if (not self.training or self.track) else None
        y, nrm, nrv = reference.batch_norm_forward(
            x, self.weight, self.bias, rm, rv, use_batch, factor, self.eps
        )
        if use_batch:
            mean, var = reference.batch_norm_stats(x)
        else:
            mean, var = self.running_mean, self.running_var
        if self.training and self.track:
            self.running_mean, self.running_var = nrm, nrv
        self._saved = (x, mean, 1.0 / np.sqrt(var + self.eps), use_batch)
        return y

    def backward(self, dy):
        x, mean, invstd, use_batch = self._saved
        dx, dw, db = reference.batch_norm_backward(dy, x, self.weight, mean, invstd, use_batch)
        if self.weight is not None:
            self.weight_grad = dw if self.weight_grad is None else self.weight_grad + dw
        if self.bias is not None:
            self.bias_grad = db if self.bias_grad is None else self.bias_grad + db
        return dx


class RefInstanceNorm:
    """A NumPy model of torch's InstanceNorm state machine."""

    def __init__(self, C, eps=EPS, momentum=0.1, affine=False, track=False):
        self.eps, self.momentum, self.track = eps, momentum, track
        self.weight = np.ones(C) if affine else None
        self.bias = np.zeros(C) if affine else None
        self.running_mean = np.zeros(C) if track else None
        self.running_var = np.ones(C) if track else None
        self.training = True

    def forward(self, x):
        use_input = self.training or not self.track
        mom = 0.0 if self.momentum is None else self.momentum
        rm = self.running_mean if self.track else None
        rv = self.running_var if self.track else None
        y, nrm, nrv = reference.instance_norm_forward(
            x, rm, rv, self.weight, self.bias, use_input, mom, self.eps
        )
        if use_input and self.track:
            self.running_mean, self.running_var = nrm, nrv
        self._saved = (x, use_input)
        return y

    def backward(self, dy):
        x, use_input = self._saved
        return reference.instance_norm_backward(
            dy, x, self.weight, self.eps, self.running_mean, self.running_var, use_input
        )
