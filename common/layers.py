"""The new layers put on top of every pretrained network: new_head(in_features, num_classes, bottleneck), and SHOT's
form of them (shot_head)."""
from torch import nn
from torch.nn.utils import parametrizations


def new_head(in_features, num_classes, bottleneck):
    """The new layers on top of a pretrained backbone: the classifier, behind a bottleneck (Linear, BatchNorm1d,
    ReLU) of `bottleneck` units as in the DAN/DANN/CDAN ResNet-50 setups, or straight on the features (0)."""
    if not bottleneck:
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Linear(in_features, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU(),
                         nn.Linear(bottleneck, num_classes))


def shot_head(head):
    """SHOT's new layers (its code's network.py: feat_bottleneck of type "bn", feat_classifier of type "wn"), made
    in place from new_head's: the bottleneck Linear then BatchNorm1d with no ReLU after it (an Identity keeps the
    layers' positions), and the classifier weight-normalised, w = g v / ||v|| for each class's row."""
    for name, module in list(head.named_modules()):
        if isinstance(module, nn.ReLU):
            head.set_submodule(name, nn.Identity())
    parametrizations.weight_norm([m for m in head.modules() if isinstance(m, nn.Linear)][-1])
    return head
