"""CDAN: a domain discriminator conditioned on the predictions, through the multilinear map."""
import torch
import torch.nn.functional as F

from methods.method import Method
from methods.parts import MultilinearMap, ReverseGradient, discriminator, domain_loss, entropy, ramp


class CDAN(Method):
    """CDAN (Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018): DANN's discriminator D sees
    T(f, g), the multilinear map of the features f (behind gradient reversal, ramped as DANN's) and the class
    probabilities g (parts.MultilinearMap: f ⊗ g, randomized beyond 4,096 entries); the term is D's binary
    cross-entropy -E_s w log D(T) - E_t w log(1 - D(T)). CDAN+E (--entropy=True) weights each image by
    w = 1 + exp(-H(g)), normalised within each domain, so that confident predictions count more; else w = 1."""
    bottleneck = 256
    flags = {"entropy": "CDAN's entropy conditioning (CDAN+E)"}
    colour = "#9467bd"
    flag_labels = {"entropy": "+e"}
    label_colours = {"cdan+e": "#c5b0d5"}

    def __init__(self, feature_size, num_classes, trade_off, features, entropy=False):
        super().__init__(feature_size, num_classes, trade_off, features)
        self.entropy_conditioning = entropy
        self.map = MultilinearMap(feature_size, num_classes)
        self.discriminator = discriminator(self.map.out_features)

    def term(self, features, logits, progress):
        f = ReverseGradient.apply(list(features.values())[-1], self.trade_off * ramp(progress))
        g = F.softmax(logits, dim=1).detach()  # CDAN conditions on the predictions, not through them
        weights = 1 + torch.exp(-entropy(g)) if self.entropy_conditioning else None  # CDAN+E: confident ones count more
        return domain_loss(self.discriminator(self.map(f, g)), weights)
