"""The new layers put on top of every pretrained network: new_head(in_features, num_classes, bottleneck)."""
from torch import nn

def new_head(in_features, num_classes, bottleneck):
    """The new layers on top of a pretrained backbone: the classifier, behind a bottleneck (Linear, BatchNorm1d,
    ReLU) of `bottleneck` units as in the DAN/DANN/CDAN ResNet-50 setups, or straight on the features (0)."""
    if not bottleneck:
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Linear(in_features, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU(),
                         nn.Linear(bottleneck, num_classes))
