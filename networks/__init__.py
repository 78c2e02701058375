"""The networks: build any torchvision classifier with its new last layer (models.py, for the families past AlexNet
and ResNet: backbone.py) and the papers' Caffe AlexNet (caffe_alexnet.py). alexnet.py and resnet.py, at the top,
are the two the papers use."""
