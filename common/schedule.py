"""The protocol's learning-rate schedule, the "inv" annealing of DANN/DAN, shared by the training loop
(runs/optimizer.py) and the target stage of SHOT (methods/shot.py, whose code anneals the same way).

    set_progress(optimizer, step / total_steps)        # lr_0 * (1 + 10 p)^-0.75 in every group (its "initial_lr")
"""


def annealed(initial_lr, progress):
    """The "inv" schedule of DANN/DAN: lr_p = lr_0 (1 + 10 p)^-0.75, progress p from 0 to 1."""
    return initial_lr * (1 + 10 * progress) ** -0.75


def set_progress(optimizer, progress):
    for group in optimizer.param_groups:  # the same factor for every group keeps the lr_mult ratio
        group["lr"] = annealed(group["initial_lr"], progress)
