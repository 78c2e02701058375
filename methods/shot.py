"""SHOT: a source model with smoothed labels behind a weight-normalised classifier (ShotSource), then adapted to the
target's images alone, with no source image and no target label (SHOT)."""
import time

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import Diverged, Stopped
from common.schedule import set_progress
from data_loader import part, relabelled
from methods.method import Method, in_fp32
from methods.parts import entropy

PAPER = ("Liang, Hu and Feng, \"Do We Really Need to Access the Source Data? Source Hypothesis Transfer for "
         "Unsupervised Domain Adaptation\", ICML 2020")


class ShotSource(Method):
    """SHOT's source model (the paper's Sec. 3.1; its code's object/image_source.py and network.py): the network
    fine-tuned on the source's labels alone, as source only on this loop and schedule, behind SHOT's new layers, a
    256-wide bottleneck (Linear then BatchNorm1d, no ReLU) and a weight-normalised classifier (common/layers.py
    shot_head), with label smoothing 0.1 in its classification loss. Its runs always write their weights: SHOT and
    TENT start from them."""
    adapts = False  # (no target image: the plain loop)
    bottleneck = 256  # (its code's bottleneck)
    head = "shot"
    label_smoothing = 0.1  # (its code's --smooth)
    saves_model = True
    colour = "#525252"


class SHOT(Method):
    """SHOT's target stage (the paper's Sec. 3.2-3.3; its code's object/image_target.py): from a trained model (its
    source model, ShotSource, or --start_from), with no source image and no target label, the classifier (the source
    hypothesis) frozen and the rest trained on the target's images to minimise
        ent_par x (mean_i H(p_i) - H(mean_i p_i)) + cls_par x mean_i CE(p_i, pseudo_i)
    information maximisation (confident predictions, diverse over the batch) and the cross-entropy against
    self-supervised pseudo-labels, p_i the softmax of image i's logits, H(p) = -sum_k p_k log(p_k + epsilon). The
    pseudo-labels are made at the start of every epoch from the whole target in test crops (pseudo_labels).

    Its settings are its code's for Office-31 (image_target.py's defaults), whatever the flags, which train the
    source stage: an epoch is a shuffled pass over the target in batches of 64 (the last one shorter; a last batch
    of one image is skipped, as there), 15 epochs; SGD with Nesterov momentum 0.9 and weight decay 1e-3, the
    bottleneck at lr 0.01 and the backbone at 0.1 x that (lr_decay2 1.0, lr_decay1 0.1), annealed as
    lr (1 + 10 p)^-0.75 with p = step / steps counted from 1 (its lr_scheduler); the crops and flips of training."""
    starts_from = "shot_source"
    kind = "source-free"
    adapts = False  # (no term on the source loop: adapt() is its training)
    bottleneck = 256
    head = "shot"
    colour = "#e377c2"
    epochs, batch_size = 15, 64  # (max_epoch; interval 15: pseudo-labels at every epoch's start)
    lr, backbone_lr = 0.01, 0.1  # (lr; lr_decay1: the backbone's factor)
    momentum, weight_decay = 0.9, 1e-3  # (lr_scheduler)
    cls_par, ent_par = 0.3, 1.0  # (cls_par, ent_par; gent True: the diversity term; its epsilon 1e-5: entropy's)
    rounds = 2  # labelling rounds in pseudo_labels (obtain_label's loop)

    @staticmethod
    @in_fp32
    def information_maximisation(logits):
        """mean_i H(p_i) - H(mean_i p_i): low when each prediction is confident and the batch's are diverse (H:
        parts.entropy, whose log(p + 1e-5) is SHOT's, epsilon 1e-5)."""
        p = F.softmax(logits, dim=1)
        return entropy(p).mean() - entropy(p.mean(0, keepdim=True)).sum()

    @staticmethod
    @in_fp32
    def pseudo_label_loss(logits, pseudo):
        """The cross-entropy of the predictions against the pseudo-labels."""
        return F.cross_entropy(logits, pseudo)

    @staticmethod
    def pseudo_labels(logits, features, rounds=rounds):
        """SHOT's pseudo-labels of every target image (its obtain_label, threshold 0, cosine distance), from the
        model's logits and the classifier's input features of the images in test crops: each feature gets a 1
        appended and is scaled to unit length; the class centroids are the features' means weighted by the softmax
        predictions; each image takes the class of its nearest centroid in cosine distance among the classes some
        image is predicted as; then the centroids are the means of each class's images, and the images are labelled
        again (rounds in all)."""
        features = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)
        features = features / features.norm(dim=1, keepdim=True)
        weights = F.softmax(logits.double(), dim=1)
        predicted, classes = weights.argmax(1), weights.shape[1]
        for _ in range(rounds):
            centroids = weights.T @ features / (1e-8 + weights.sum(0)[:, None])
            present = torch.bincount(predicted, minlength=classes).nonzero().flatten()
            chosen = centroids[present]
            distance = 1 - features @ chosen.T / chosen.norm(dim=1)  # (the features have unit length)
            predicted = present[distance.argmin(1)]
            weights = F.one_hot(predicted, classes).double()
        return predicted

    @classmethod
    def adapt(cls, c, run, target, evaluate, stop):
        classifier = [m for m in run.head.modules() if isinstance(m, nn.Linear)][-1]
        classifier.requires_grad_(False)  # the source hypothesis stays as it is
        optimizer = cls.optimizer(run.net, run.head)
        images = part(target, torch.arange(len(target)))  # its training images (where it has lists, its train list)
        generator = run.generators[1]  # (the target's stream)
        batches = sum(len(chunk) > 1 for chunk in torch.arange(len(images)).split(cls.batch_size))
        steps, step, history = cls.epochs * batches, 0, []
        for epoch in range(1, cls.epochs + 1):
            start = time.time()
            labels = cls.labelled(c, run, images, target, evaluate, classifier)
            run.net.train()
            sums = {"pseudo_label": 0.0, "information_maximisation": 0.0}
            for chunk in torch.randperm(len(images), generator=generator).split(cls.batch_size):
                if len(chunk) < 2:
                    continue
                step += 1
                set_progress(optimizer, step / steps)
                (x, pseudo), = part(labels, chunk).train_batches(1, len(chunk), c["crop_size"], generator, run.pixels)
                terms = cls.step(run, optimizer, x, pseudo)
                if not all(torch.isfinite(t) for t in terms.values()):
                    raise Diverged(f"shot's loss is not finite at epoch {epoch}, step {step} of {steps} "
                                   f"({', '.join(f'{k} {float(v)}' for k, v in terms.items())}): this run writes no "
                                   "result. Its settings are SHOT's own; try --amp=off if it trained in bf16.")
                for name, term in terms.items():
                    sums[name] += float(term) * len(chunk)
                if stop is not None and stop.requested:
                    raise Stopped(f"{stop.who()} stopped shot's target stage at epoch {epoch}; it starts again from "
                                  "its source model when the same command runs again.")
            seen = len(images) - (len(images) % cls.batch_size == 1)
            history.append({"epoch": epoch, "loss": sums["pseudo_label"] / seen,
                            "adaptation_loss": sums["information_maximisation"] / seen, "source_acc": None,
                            "target_acc": None, "seconds": time.time() - start})
            print(f"shot epoch {epoch}/{cls.epochs}  pseudo-labels {history[-1]['loss']:.3f}  information "
                  f"maximisation {history[-1]['adaptation_loss']:.3f}  {history[-1]['seconds']:.1f}s")
        return history, None

    @classmethod
    def optimizer(cls, net, head):
        """SGD over what trains: the head's layers but the frozen classifier at lr, the rest at backbone_lr x lr."""
        new = [p for p in head.parameters() if p.requires_grad]
        ids = {id(p) for p in new}
        backbone = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": backbone, "initial_lr": cls.lr * cls.backbone_lr}, {"params": new, "initial_lr": cls.lr}]
        return torch.optim.SGD(groups, lr=cls.lr, momentum=cls.momentum, weight_decay=cls.weight_decay, nesterov=True)

    @classmethod
    def labelled(cls, c, run, images, target, evaluate, classifier):
        """The target with every training image's pseudo-label (pseudo_labels) as its label; its own labels,
        which evaluate returns too, are dropped unread."""
        outputs = evaluate(run.net, images.test_batches(c["eval_batch_size"], c["crop_size"], run.pixels), run.amp,
                           run.memory_format, classifier)
        labels = torch.zeros(len(target.targets), dtype=torch.long)
        labels[images.tested().cpu()] = cls.pseudo_labels(outputs.logits, outputs.features)
        return relabelled(target, labels)

    @classmethod
    def step(cls, run, optimizer, x, pseudo):
        """One SGD step on a batch of target images and their pseudo-labels: {term: its value, detached}."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=run.amp):
            logits = run.net(x.contiguous(memory_format=run.memory_format))
        terms = {"pseudo_label": cls.cls_par * cls.pseudo_label_loss(logits, pseudo=pseudo),  # (labels: not cast)
                 "information_maximisation": cls.ent_par * cls.information_maximisation(logits)}
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        optimizer.step()
        return {name: term.detach() for name, term in terms.items()}
