"""Catalogue of bad inputs for every public function and class.

Each entry calls the public API with one bad argument and asserts the exception type
(``TypeError`` for a wrong type, ``ValueError`` for a wrong value or shape) and that the message
names the argument and what was expected (a regex on the message). Entries marked
``xfail(strict=True, reason="bug: ...")`` document defects of other modules still to be fixed:
they start failing (XPASS) as soon as the fix lands, so the marker must then be removed.

``test_catalogue_messages_are_precise`` also checks that no message is a bare PyTorch error.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import optim
from orthocond import linalg, ortho
from orthocond import models as om
from orthocond import nn as onn
from orthocond.nn.sync_whitening import (
    SyncDecorrelatedBatchNorm2d,
    convert_sync_decorrelated_batchnorm,
)

I3 = torch.eye(3)
NAN = float("nan")
INF = float("inf")


def _nan_matrix() -> torch.Tensor:
    A = torch.eye(3)
    A[0, 0] = NAN
    return A


def _inf_matrix() -> torch.Tensor:
    A = torch.eye(3)
    A[0, 1] = INF
    return A


def _conv() -> nn.Conv2d:
    return nn.Conv2d(3, 4, 3, bias=False)


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1)


def _nog_on(make_params, **kwargs):
    conv = nn.Conv2d(3, 4, 3)
    opt = _sgd(conv.parameters())
    return optim.NOG(opt, make_params(conv), **kwargs)


def _olr_shared_group():
    lin = nn.Linear(3, 3)
    opt = _sgd(lin.parameters())  # weight and bias in one group
    return optim.OLR(opt, [lin.weight])


def _nog_after_olr():
    conv = _conv()
    opt = _sgd([conv.weight])
    optim.OLR(opt, [conv.weight])
    return optim.NOG(opt, [conv.weight])


def bug(reason: str):
    return pytest.mark.xfail(strict=True, reason=f"bug: {reason}")


def case(id_, call, exc, match, *marks):
    return pytest.param(call, exc, match, id=id_, marks=marks)


LINALG = [
    # --- sqrtm / inv_sqrtm
    case("sqrtm-not-tensor", lambda: linalg.sqrtm([[1.0, 0.0], [0.0, 1.0]]), TypeError, r"A must be a torch\.Tensor, got list"),
    case("sqrtm-1d", lambda: linalg.sqrtm(torch.ones(3)), ValueError, r"A must have at least 2 dims .*got shape \(3,\)"),
    case("sqrtm-non-square", lambda: linalg.sqrtm(torch.randn(3, 4)), ValueError, r"A must be square .*\(3, 4\)"),
    case("sqrtm-empty-matrix", lambda: linalg.sqrtm(torch.zeros(0, 0)), ValueError, r"A must have non-empty matrix dims"),
    case("sqrtm-integer", lambda: linalg.sqrtm(torch.eye(3, dtype=torch.int64)), TypeError, r"A must have a floating dtype .*int64"),
    case("sqrtm-complex", lambda: linalg.sqrtm(torch.eye(3, dtype=torch.complex64)), TypeError, r"A must have a floating dtype .*complex64"),
    case("sqrtm-nan", lambda: linalg.sqrtm(_nan_matrix()), ValueError, r"A contains NaN or Inf"),
    case("sqrtm-inf", lambda: linalg.sqrtm(_inf_matrix(), "eig"), ValueError, r"A contains NaN or Inf"),
    case("sqrtm-unknown-method", lambda: linalg.sqrtm(I3, "svd"), ValueError, r"method must be one of 'eig', 'ns', 'mpa'; got 'svd'"),
    case("sqrtm-method-none", lambda: linalg.sqrtm(I3, None), ValueError, r"method must be one of .*got None"),
    case("sqrtm-unknown-backward", lambda: linalg.sqrtm(I3, "eig", backward="foo"), ValueError, r"backward must be one of 'exact', 'svd', 'taylor', 'pade', 'svd-unguarded'; got 'foo'"),
    case("sqrtm-backward-needs-eig", lambda: linalg.sqrtm(I3, "ns", backward="taylor"), ValueError, r"backward='taylor' applies to method='eig' only"),
    case("sqrtm-iters-zero", lambda: linalg.sqrtm(I3, iters=0), ValueError, r"iters must be >= 1, got 0"),
    case("sqrtm-iters-float", lambda: linalg.sqrtm(I3, iters=2.0), TypeError, r"iters must be an int, got float"),
    case("sqrtm-eps-negative", lambda: linalg.sqrtm(I3, eps=-1.0), ValueError, r"eps must be a finite float >= 0, got -1"),
    case("sqrtm-eps-nan", lambda: linalg.sqrtm(I3, eps=NAN), ValueError, r"eps must be a finite float >= 0, got nan"),
    case("sqrtm-eps-inf", lambda: linalg.sqrtm(I3, eps=INF), ValueError, r"eps must be a finite float >= 0, got inf"),
    case("sqrtm-taylor-degree", lambda: linalg.sqrtm(I3, "eig", backward="taylor", taylor_degree=0), ValueError, r"taylor_degree must be >= 1, got 0"),
    case("inv_sqrtm-non-square", lambda: linalg.inv_sqrtm(torch.randn(2, 3)), ValueError, r"A must be square"),
    case("inv_sqrtm-integer", lambda: linalg.inv_sqrtm(torch.eye(2, dtype=torch.int32)), TypeError, r"A must have a floating dtype"),
    case("inv_sqrtm-nan", lambda: linalg.inv_sqrtm(_nan_matrix(), "ns"), ValueError, r"A contains NaN or Inf"),
    case("inv_sqrtm-unknown-method", lambda: linalg.inv_sqrtm(I3, "cholesky"), ValueError, r"method must be one of"),
    # --- polar
    case("polar-1d", lambda: linalg.polar(torch.ones(3)), ValueError, r"G must have at least 2 dims"),
    case("polar-integer", lambda: linalg.polar(torch.ones(3, 3, dtype=torch.long)), TypeError, r"G must have a floating dtype"),
    case("polar-nan", lambda: linalg.polar(_nan_matrix()), ValueError, r"G contains NaN or Inf"),
    case("polar-unknown-method", lambda: linalg.polar(I3, "qr"), ValueError, r"method must be one of 'svd', 'ns'; got 'qr'"),
    case("polar-rtol-needs-svd", lambda: linalg.polar(I3, "ns", rtol=0.1), ValueError, r"rtol needs method='svd'"),
    case("polar-rtol-range", lambda: linalg.polar(I3, rtol=1.0), ValueError, r"rtol must be a finite float in \[0, 1\), got 1\.0"),
    case("polar-steps-zero", lambda: linalg.polar(I3, "ns", steps=0), ValueError, r"steps must be >= 1, got 0"),
    case("polar-steps-with-svd", lambda: linalg.polar(I3, "svd", steps=3), ValueError, r"steps .*method='ns'"),
    case("polar_express_coefficients-steps-zero", lambda: linalg.polar_express_coefficients(0), ValueError, r"steps must be >= 1"),
    case("polar_express_coefficients-lower", lambda: linalg.polar_express_coefficients(3, 2.0), ValueError, r"lower must .*\(0, 1\)"),
    # --- cond / covariance / lyapunov
    case("cond-non-square", lambda: linalg.cond(torch.randn(2, 3)), ValueError, r"A must be square"),
    case("cond-integer", lambda: linalg.cond(torch.eye(2, dtype=torch.long)), TypeError, r"A must have a floating dtype"),
    case("covariance-1d", lambda: linalg.covariance(torch.ones(3)), ValueError, r"X must have at least 2 dims"),
    case("covariance-integer", lambda: linalg.covariance(torch.ones(3, 4, dtype=torch.long)), TypeError, r"X must have a floating dtype"),
    case("lyapunov_sign-non-square", lambda: linalg.lyapunov_sign(torch.randn(2, 3), torch.randn(2, 3), 3), ValueError, r"B must be square"),
    case("lyapunov_sign-shape-mismatch", lambda: linalg.lyapunov_sign(I3, torch.eye(2), 3), ValueError, r"C must have the shape of B"),
    case("lyapunov_sign-iters-zero", lambda: linalg.lyapunov_sign(I3, I3, 0), ValueError, r"iters must be >= 1"),
]

NN = [
    # --- GlobalCovPool and functional pooling
    case("GlobalCovPool-in_channels-zero", lambda: onn.GlobalCovPool(0), ValueError, r"in_channels must be >= 1, got 0"),
    case("GlobalCovPool-in_channels-float", lambda: onn.GlobalCovPool(3.0), TypeError, r"in_channels must be an int, got float"),
    case("GlobalCovPool-reduced-zero", lambda: onn.GlobalCovPool(3, 0), ValueError, r"reduced_channels must be >= 1, got 0"),
    case("GlobalCovPool-unknown-method", lambda: onn.GlobalCovPool(3, 2, method="svd"), ValueError, r"method must be one of .*'svd'"),
    case("GlobalCovPool-backward-needs-eig", lambda: onn.GlobalCovPool(3, 2, method="ns", backward="pade"), ValueError, r"backward='pade' .*needs method='eig'"),
    case("GlobalCovPool-iters-zero", lambda: onn.GlobalCovPool(3, 2, iters=0), ValueError, r"iters must be >= 1, got 0"),
    case("GlobalCovPool-eps-negative", lambda: onn.GlobalCovPool(3, 2, eps=-1.0), ValueError, r"eps must be a finite float >= 0"),
    case("GlobalCovPool-vectorize-str", lambda: onn.GlobalCovPool(3, 2, vectorize="no"), TypeError, r"vectorize must be a bool"),
    case("GlobalCovPool-input-not-tensor", lambda: onn.GlobalCovPool(3, 2)([1, 2]), TypeError, r"GlobalCovPool expects a torch\.Tensor input, got list"),
    case("GlobalCovPool-input-3d", lambda: onn.GlobalCovPool(3, 2)(torch.randn(2, 3, 4)), ValueError, r"GlobalCovPool expects input of shape \(B, C, H, W\)"),
    case("GlobalCovPool-channel-mismatch", lambda: onn.GlobalCovPool(3, 2)(torch.randn(2, 5, 4, 4)), ValueError, r"expects 3 channels in dim 1, got shape \(2, 5, 4, 4\)"),
    case("GlobalCovPool-integer-input", lambda: onn.GlobalCovPool(3, 2)(torch.ones(2, 3, 4, 4, dtype=torch.long)), TypeError, r"expects a floating-point input"),
    case("GlobalCovPool-nan-input", lambda: onn.GlobalCovPool(3, None)(torch.full((2, 3, 4, 4), NAN)), ValueError, r"NaN or Inf"),
    case("global_cov_pool-3d", lambda: onn.global_cov_pool(torch.randn(2, 3, 4)), ValueError, r"global_cov_pool expects input of shape \(B, C, H, W\)"),
    case("global_cov_pool-unknown-method", lambda: onn.global_cov_pool(torch.randn(2, 3, 4, 4), "svd"), ValueError, r"method must be one of"),
    case("pooled_covariance-3d", lambda: onn.pooled_covariance(torch.randn(2, 3, 4)), ValueError, r"pooled_covariance expects input of shape \(B, C, H, W\)"),
    case("pooled_covariance-integer", lambda: onn.pooled_covariance(torch.ones(2, 3, 4, 4, dtype=torch.long)), TypeError, r"floating-point input"),
    case("pooled_covariance-eps", lambda: onn.pooled_covariance(torch.randn(2, 3, 4, 4), eps=-1), ValueError, r"eps must be a finite float >= 0"),
    case("triu_vectorize-non-square", lambda: onn.triu_vectorize(torch.randn(2, 3)), ValueError, r"A must have shape \(\.\.\., d, d\)"),
    case("triu_vectorize-not-tensor", lambda: onn.triu_vectorize([[1.0]]), TypeError, r"A must be a torch\.Tensor"),
    # --- decorrelated BN
    case("DecorrelatedBatchNorm2d-groups-not-dividing", lambda: onn.DecorrelatedBatchNorm2d(6, groups=4), ValueError, r"groups=4 must divide num_features=6"),
    case("DecorrelatedBatchNorm2d-groups-zero", lambda: onn.DecorrelatedBatchNorm2d(6, groups=0), ValueError, r"groups must be >= 1, got 0"),
    case("DecorrelatedBatchNorm2d-num_features-zero", lambda: onn.DecorrelatedBatchNorm2d(0), ValueError, r"num_features must be >= 1"),
    case("DecorrelatedBatchNorm2d-num_features-float", lambda: onn.DecorrelatedBatchNorm2d(6.0), TypeError, r"num_features must be an int"),
    case("DecorrelatedBatchNorm2d-eps-negative", lambda: onn.DecorrelatedBatchNorm2d(6, eps=-1.0), ValueError, r"eps must be a finite float >= 0"),
    case("DecorrelatedBatchNorm2d-momentum", lambda: onn.DecorrelatedBatchNorm2d(6, momentum=2.0), ValueError, r"momentum must lie in \[0, 1\], got 2\.0"),
    case("DecorrelatedBatchNorm2d-unknown-method", lambda: onn.DecorrelatedBatchNorm2d(6, method="cholesky"), ValueError, r"method must be one of .*'cholesky'"),
    case("DecorrelatedBatchNorm2d-backward-needs-eig", lambda: onn.DecorrelatedBatchNorm2d(6, method="ns", backward="svd"), ValueError, r"backward='svd' .*needs method='eig'"),
    case("DecorrelatedBatchNorm2d-input-3d", lambda: onn.DecorrelatedBatchNorm2d(6)(torch.randn(2, 6, 4)), ValueError, r"expects input of shape \(N, C, H, W\)"),
    case("DecorrelatedBatchNorm2d-channel-mismatch", lambda: onn.DecorrelatedBatchNorm2d(6)(torch.randn(2, 5, 4, 4)), ValueError, r"expects 6 channels in dim 1"),
    case("DecorrelatedBatchNorm2d-integer-input", lambda: onn.DecorrelatedBatchNorm2d(6)(torch.ones(2, 6, 4, 4, dtype=torch.long)), TypeError, r"floating-point input"),
    case("DecorrelatedBatchNorm2d-nan-input", lambda: onn.DecorrelatedBatchNorm2d(6)(torch.full((2, 6, 4, 4), NAN)), ValueError, r"NaN or Inf"),
    case("DecorrelatedBatchNorm2d-one-value", lambda: onn.DecorrelatedBatchNorm2d(6)(torch.randn(1, 6, 1, 1)), ValueError, r"needs more than 1 value per channel in training"),
    case("DecorrelatedBatchNorm2d-affine-str", lambda: onn.DecorrelatedBatchNorm2d(6, affine="no"), TypeError, r"affine must be a bool"),
    case("DecorrelatedBatchNorm2d-track_running_stats-int", lambda: onn.DecorrelatedBatchNorm2d(6, track_running_stats=0), TypeError, r"track_running_stats must be a bool, got int"),
    case("DecorrelatedBatchNorm1d-input-4d", lambda: onn.DecorrelatedBatchNorm1d(6)(torch.randn(2, 6, 4, 4)), ValueError, r"expects input of shape \(N, C\) or \(N, C, L\)"),
    case("zca_whiten-groups", lambda: onn.zca_whiten(torch.randn(4, 6), groups=4), ValueError, r"groups=4 must divide num_features=6"),
    case("zca_whiten-1d", lambda: onn.zca_whiten(torch.randn(6)), ValueError, r"zca_whiten expects input of shape \(N, C, \*\)"),
    case("zca_whiten-running-one-of-two", lambda: onn.zca_whiten(torch.randn(4, 6), running_mean=torch.zeros(6)), ValueError, r"running_mean and running_cov must be given together"),
    case("zca_whiten-running-shape", lambda: onn.zca_whiten(torch.randn(4, 6), running_mean=torch.zeros(5), running_cov=torch.eye(6)[None]), ValueError, r"expected running_mean of shape \(6,\)"),
    case("zca_whitening_matrix-non-square", lambda: onn.zca_whitening_matrix(torch.randn(2, 3)), ValueError, r"must be square"),
    case("zca_whitening_matrix-eps", lambda: onn.zca_whitening_matrix(torch.eye(3), eps=-1.0), ValueError, r"eps must be a finite float >= 0"),
    case("SyncDecorrelatedBatchNorm2d-process_group", lambda: SyncDecorrelatedBatchNorm2d(4, process_group=3), TypeError, r"process_group must be None .*or a torch\.distributed\.ProcessGroup, got int"),
    case("SyncDecorrelatedBatchNorm2d-groups", lambda: SyncDecorrelatedBatchNorm2d(4, groups=3), ValueError, r"groups=3 must divide num_features=4"),
    case("convert_sync_decorrelated_batchnorm-not-module", lambda: convert_sync_decorrelated_batchnorm([1]), TypeError, r"module must be an nn\.Module, got list"),
    # --- SOC
    case("SkewOrthogonalConv2d-even-kernel", lambda: onn.SkewOrthogonalConv2d(3, 3, 2), ValueError, r"kernel_size must be odd and positive, got 2"),
    case("SkewOrthogonalConv2d-in_channels-zero", lambda: onn.SkewOrthogonalConv2d(0, 3, 3), ValueError, r"in_channels must be >= 1"),
    case("SkewOrthogonalConv2d-stride-zero", lambda: onn.SkewOrthogonalConv2d(3, 3, 3, stride=0), ValueError, r"stride must be >= 1, got 0"),
    case("SkewOrthogonalConv2d-channel-mismatch", lambda: onn.SkewOrthogonalConv2d(3, 4, 3)(torch.randn(2, 5, 6, 6)), ValueError, r"expects 3 channels in dim 1"),
    case("SkewOrthogonalConv2d-input-3d", lambda: onn.SkewOrthogonalConv2d(3, 3, 3)(torch.randn(3, 6, 6)), ValueError, r"expects input of shape \(N, C, H, W\)"),
    case("SkewOrthogonalConv2d-integer-input", lambda: onn.SkewOrthogonalConv2d(3, 3, 3)(torch.ones(1, 3, 4, 4, dtype=torch.long)), TypeError, r"floating-point input"),
    case("conv_norm_bound_matrices-3d", lambda: onn.conv_norm_bound_matrices(torch.randn(3, 3, 3)), ValueError, r"kernel must have 4 dims"),
]

ORTHO_MODELS = [
    case("orthogonal-1d-weight", lambda: ortho.orthogonal(nn.BatchNorm2d(3)), ValueError, r"weight must have at least 2 dims .*got shape \(3,\)"),
    case("orthogonal-missing-name", lambda: ortho.orthogonal(_conv(), "weights"), ValueError, r"Conv2d has no parameter 'weights'"),
    case("orthogonal-unknown-triv", lambda: ortho.orthogonal(_conv(), triv="qr"), ValueError, r"triv must be one of 'expm', 'cayley'; got 'qr'"),
    case("orthogonal-not-module", lambda: ortho.orthogonal(torch.ones(3, 3)), TypeError, r"module must be an nn\.Module, got Tensor"),
    case("orthogonal-twice", lambda: ortho.orthogonal(ortho.orthogonal(_conv())), ValueError, r"already parametrized"),
    case("oni-iters-zero", lambda: ortho.oni(_conv(), iters=0), ValueError, r"iters must be >= 1, got 0"),
    case("own-group_size-zero", lambda: ortho.own(_conv(), group_size=0), ValueError, r"group_size must be >= 1, got 0"),
    case("trainable_tensor-missing", lambda: ortho.trainable_tensor(_conv(), "foo"), ValueError, r"has no parameter 'foo'"),
    case("orthogonality_error-1d", lambda: ortho.orthogonality_error(torch.ones(3)), ValueError, r"weight must have at least 2 dims"),
    case("orthogonality_error-integer", lambda: ortho.orthogonality_error(torch.ones(3, 3, dtype=torch.long)), TypeError, r"weight must have a floating dtype"),
    case("orthogonality_error-nan", lambda: ortho.orthogonality_error(_nan_matrix()), ValueError, r"weight contains NaN or Inf"),
    case("so_penalty-1d", lambda: ortho.so_penalty(torch.ones(3)), ValueError, r"weight must have at least 2 dims"),
    case("srip_penalty-iters-zero", lambda: ortho.srip_penalty(I3, iters=0), ValueError, r"iters must be >= 1, got 0"),
    case("orthogonality_penalty-unknown-kind", lambda: ortho.orthogonality_penalty([I3], "l2"), ValueError, r"kind must be one of 'so', 'dso', 'mc', 'srip'; got 'l2'"),
    case("orthogonality_penalty-empty", lambda: ortho.orthogonality_penalty([], "so"), ValueError, r"no weights given"),
    case("orthogonality_penalty-no-pre-svd", lambda: ortho.orthogonality_penalty(nn.Linear(3, 3)), ValueError, r"the model has no Pre-SVD weight"),
    case("orthogonality_penalty-coefficient-nan", lambda: ortho.orthogonality_penalty([I3], "so", NAN), ValueError, r"coefficient must be a finite float >= 0, got nan"),
    case("orthogonality_penalty-coefficient-negative", lambda: ortho.orthogonality_penalty([I3], "so", -1.0), ValueError, r"coefficient must be a finite float >= 0, got -1.0"),
    case("srip_schedule-negative-epoch", lambda: ortho.srip_schedule(-1), ValueError, r"epoch must be a finite float >= 0, got -1"),
    case("pre_svd_modules-not-module", lambda: om.pre_svd_modules([1]), TypeError, r"model must be an nn\.Module, got list"),
    case("cifar_resnet18-num_classes", lambda: om.cifar_resnet18(num_classes=0), ValueError, r"num_classes must be >= 1, got 0"),
    case("cifar_resnet18-unknown-stem", lambda: om.cifar_resnet18(stem="foo"), ValueError, r"stem must be 'conv' or 'soc', got 'foo'"),
    case("gcp_resnet18-unknown-head", lambda: om.gcp_resnet18(head="foo"), ValueError, r"head must be 'gcp' or 'gap', got 'foo'"),
    case("cifar_resnet18-channel-mismatch", lambda: om.cifar_resnet18(width=8)(torch.randn(2, 4, 8, 8)), ValueError, r"ResNet expects 3 channels in dim 1"),
    case("cifar_resnet18-input-3d", lambda: om.cifar_resnet18(width=8)(torch.randn(3, 8, 8)), ValueError, r"ResNet expects input of shape \(N, C, H, W\).*got shape \(3, 8, 8\)"),
]

OPTIM = [
    case("NOG-1d-parameter", lambda: _nog_on(lambda c: [c.bias]), ValueError, r"NOG: params\[0\] has shape \(4,\); NOG needs a weight with at least 2 dims"),
    case("NOG-not-optimizer", lambda: optim.NOG([1], [_conv().weight]), TypeError, r"NOG: optimizer must be a torch\.optim\.Optimizer, got list"),
    case("NOG-params-module", lambda: _nog_on(lambda c: c), TypeError, r"NOG: params must be a tensor or an iterable of tensors, got a Module"),
    case("NOG-params-empty", lambda: _nog_on(lambda c: []), ValueError, r"NOG: params is empty"),
    case("NOG-params-not-in-optimizer", lambda: optim.NOG(_sgd(_conv().parameters()), [_conv().weight]), ValueError, r"NOG: params\[0\] .*is not one of the optimizer's parameters"),
    case("NOG-unknown-method", lambda: _nog_on(lambda c: [c.weight], method="qr"), ValueError, r"NOG: method must be one of 'svd', 'ns'; got 'qr'"),
    case("NOG-unknown-scale", lambda: _nog_on(lambda c: [c.weight], scale="x"), ValueError, r"NOG: scale must be one of 'none', 'grad', 'spectral'; got 'x'"),
    case("NOG-unknown-target", lambda: _nog_on(lambda c: [c.weight], target="x"), ValueError, r"NOG: target must be one of 'gradient', 'update'; got 'x'"),
    case("NOG-rtol-range", lambda: _nog_on(lambda c: [c.weight], rtol=2.0), ValueError, r"NOG: rtol must be None or a float in \[0, 1\), got 2\.0"),
    case("NOG-after-OLR", _nog_after_olr, ValueError, r"NOG: an OLR is already registered .*Create NOG first"),
    case("nearest_orthogonal_gradient-1d", lambda: optim.nearest_orthogonal_gradient(torch.ones(3)), ValueError, r"grad must have at least 2 dims"),
    case("nearest_orthogonal_gradient-integer", lambda: optim.nearest_orthogonal_gradient(torch.ones(3, 3, dtype=torch.long)), TypeError, r"grad must have a floating dtype"),
    case("nearest_orthogonal_gradient-unknown-method", lambda: optim.nearest_orthogonal_gradient(I3, "qr"), ValueError, r"method must be one of 'svd', 'ns'; got 'qr'"),
    case("OLR-params-share-group", _olr_shared_group, ValueError, r"OLR: param group 0 of the optimizer holds 1 OLR parameter\(s\) and 1 other parameter\(s\)"),
    case("OLR-unknown-mode", lambda: (lambda c: optim.OLR(_sgd([c.weight]), [c.weight], mode="x"))(_conv()), ValueError, r"OLR: mode must be one of 'paper', 'exact', 'update'; got 'x'"),
    case("OLR-exact-1d", lambda: (lambda p: optim.OLR(_sgd([p]), [p], mode="exact"))(nn.Parameter(torch.ones(3))), ValueError, r"mode='exact' needs weights with at least 2 dims"),
    case("OLR-params-not-in-optimizer", lambda: optim.OLR(_sgd([_conv().weight]), [_conv().weight]), ValueError, r"OLR: params\[0\] .*is not one of the optimizer's parameters"),
    case("olr_paper-empty", lambda: optim.olr_paper([], []), ValueError, r"weights and grads must be non-empty and of equal length"),
    case("olr_paper-shape-mismatch", lambda: optim.olr_paper([I3], [torch.eye(2)]), ValueError, r"shape mismatch \(3, 3\) vs \(2, 2\)"),
    case("olr_exact-lr-negative", lambda: optim.olr_exact([I3], [I3], -1.0), ValueError, r"lr must be a finite float >= 0, got -1\.0"),
    case("olr_exact-shape-mismatch", lambda: optim.olr_exact([I3], [torch.eye(2)], 0.1), ValueError, r"shape mismatch"),
    case("orthogonality_quartic-shape-mismatch", lambda: optim.orthogonality_quartic([I3], [torch.eye(2)]), ValueError, r"shape mismatch"),
    case("CayleySGD-lr-negative", lambda: optim.CayleySGD(_conv().parameters(), lr=-1), ValueError, r"lr must be a finite float >= 0, got -1"),
    case("CayleySGD-momentum", lambda: optim.CayleySGD(_conv().parameters(), lr=0.1, momentum=1.5), ValueError, r"momentum must be a finite float in \[0, 1\), got 1\.5"),
    case("CayleyAdam-betas", lambda: optim.CayleyAdam(_conv().parameters(), lr=0.1, betas=(1.5, 0.9)), ValueError, r"betas\[0\] must be a finite float in \[0, 1\), got 1\.5"),
]

CATALOGUE = LINALG + NN + ORTHO_MODELS + OPTIM


@pytest.mark.parametrize("call,exc,match", CATALOGUE)
def test_bad_input_raises_precise_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# Substrings of PyTorch's own errors: a message that contains one was not written for the user.
_TORCH_PHRASES = (
    "mat1 and mat2",
    "must match the size of tensor",
    "not enough values to unpack",
    "Expected more than 1 value per channel",
    "Given groups=",
)


@pytest.mark.parametrize(
    "call,exc,match",
    [p for p in CATALOGUE if not any(getattr(m, "name", "") == "xfail" for m in p.marks)],
)
def test_catalogue_messages_are_precise(call, exc, match):
    """Messages are the library's own: not a PyTorch phrase, not empty, one line first."""
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    message = str(info.value)
    assert message and message.splitlines()[0].strip()
    assert not any(phrase in message for phrase in _TORCH_PHRASES), message
    assert type(info.value) is exc


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_accepted_not_rejected(dtype):
    """Half precision is not 'bad input': the meta-layers compute in float32 and return it."""
    x = torch.randn(4, 6, 3, 3).to(dtype)
    assert onn.DecorrelatedBatchNorm2d(6)(x).dtype == dtype
    assert onn.GlobalCovPool(6, None, method="eig")(x).dtype == dtype
    assert linalg.sqrtm(torch.eye(3, dtype=dtype)).dtype == dtype


def test_gcp_batchnorm_single_value_message_names_the_layer():
    """A 1x1 map with batch 1 in training: the reduction's BatchNorm2d cannot normalise."""
    layer = onn.GlobalCovPool(3, 2)
    with pytest.raises(ValueError, match=r"more than 1 value per channel"):
        layer(torch.randn(1, 3, 1, 1))
    layer.eval()  # running statistics: fine
    with torch.no_grad():
        assert math.isfinite(float(layer(torch.randn(1, 3, 1, 1)).sum()))


# ---------------------------------------------------------------------------------------------
# the user-facing list of errors (README): ``python tests/test_bad_input.py``
# ---------------------------------------------------------------------------------------------
def error_catalogue_markdown() -> str:
    """Markdown list "- `case`: `Type`: message" of every error the catalogue raises today."""
    lines = []
    sections = (("Matrix functions (orthocond.linalg)", LINALG), ("Layers (orthocond.nn)", NN),
                ("Orthogonality and models (orthocond.ortho, orthocond.models)", ORTHO_MODELS),
                ("Optimizer plug-ins (optim)", OPTIM))
    for title, cases in sections:
        lines += ["", f"### {title}", ""]
        for p in cases:
            if any(getattr(m, "name", "") == "xfail" for m in p.marks):
                continue  # not raised yet: documented once fixed
            call = p.values[0]
            try:
                call()
            except (TypeError, ValueError) as err:
                first = str(err).splitlines()[0]
                lines.append(f"- `{p.id}`: `{type(err).__name__}`: {first}")
    return "\n".join(lines).lstrip()


def test_error_catalogue_markdown_lists_every_raising_case():
    text = error_catalogue_markdown()
    expected = [p for p in CATALOGUE if not any(getattr(m, "name", "") == "xfail" for m in p.marks)]
    assert text.count("\n- `") + text.startswith("- `") == len(expected)
    assert "`ValueError`: groups=4 must divide num_features=6" in text


if __name__ == "__main__":
    print(error_catalogue_markdown())
