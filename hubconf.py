"""torch.hub entry points: ``torch.hub.load("<repo>", "fcn8s", weights="voc-fcn8s")``.

Each takes ``weights`` (None, a released model such as ``"voc-fcn8s"`` or ``"imagenet"``, or a
file), ``num_classes`` (default: the release's, else 21) and ``create_model``'s other keyword arguments.
"""
dependencies = ["torch"]


def _create(name: str, weights=None, num_classes=None, **kwargs):
    # torch.hub imports this file to read `dependencies` first: importing the package at call time
    from fcnseg.models import create_model  # noqa: PLC0415 (optional: torch.hub checks dependencies first)
    from fcnseg.models.weights.hub import resolve  # noqa: PLC0415 (optional: as above)

    release = resolve(weights, kwargs.get("backbone"))
    if num_classes is None and (release is None or release.num_classes is None):
        num_classes = 21
    return create_model(name, num_classes, weights=weights, **kwargs)


def fcn32s(weights=None, num_classes=None, **kwargs):
    """FCN-32s (VGG16 unless ``backbone=``); releases voc-/siftflow-/nyud-/pascalcontext-fcn32s."""
    return _create("fcn32s", weights, num_classes, **kwargs)


def fcn16s(weights=None, num_classes=None, **kwargs):
    """FCN-16s; releases voc-/siftflow-/pascalcontext-fcn16s."""
    return _create("fcn16s", weights, num_classes, **kwargs)


def fcn8s(weights=None, num_classes=None, **kwargs):
    """FCN-8s (staged); releases voc-/siftflow-/pascalcontext-fcn8s."""
    return _create("fcn8s", weights, num_classes, **kwargs)


def fcn8s_atonce(weights=None, num_classes=None, **kwargs):
    """FCN-8s trained at once (scaled pool4/pool3 skips); release voc-fcn8s-atonce."""
    return _create("fcn8s-atonce", weights, num_classes, **kwargs)


def fcn_alexnet(weights=None, num_classes=None, **kwargs):
    """FCN-AlexNet (FCN-32s on the CaffeNet trunk); release voc-fcn-alexnet."""
    return _create("fcn32s", weights, num_classes, backbone="alexnet", **kwargs)
