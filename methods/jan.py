"""JAN: MMD of the joint distribution of the features and the predictions."""
import torch
import torch.nn.functional as F

from methods.method import Method, in_fp32
from methods.parts import gaussian_kernels, mmd, squared_distances


class JAN(Method):
    """JAN (Long et al., "Deep Transfer Learning with Joint Adaptation Networks", ICML 2017): MMD of the joint
    distribution of the features that feed the classifier and the softmax predictions, with the product kernel
    k(a, b) = k_f(a_f, b_f) x k_g(a_g, b_g): DAN's multi-kernel on the features, and one Gaussian
    exp(-||g - g'||^2 / bandwidth) on the predictions, through which the gradient flows too. trade_off x JMMD^2."""
    bottleneck = 256
    bandwidth = 2 * 0.92 ** 2  # 2 sigma^2 of the prediction kernel, the Transfer-Learning-Library's (JAN's code: 1.68)
    colour = "#e377c2"

    @staticmethod
    @in_fp32
    def joint_mmd(source, target, source_predictions, target_predictions, bandwidth=bandwidth):
        """MMD^2 with the product kernel over all pairs of [source; target]."""
        features = gaussian_kernels(torch.cat([source, target]))
        predictions = torch.exp(-squared_distances(torch.cat([source_predictions, target_predictions])) / bandwidth)
        return mmd(features * predictions, len(source))

    def term(self, features, logits, progress):
        half, feature = len(logits) // 2, list(features.values())[-1]
        predictions = F.softmax(logits, dim=1)
        return self.trade_off * self.joint_mmd(feature[:half], feature[half:], predictions[:half], predictions[half:])
