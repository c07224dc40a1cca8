"""The standard citations of what the runs used: datasets, models, optimizers,
schedules, augmentations and the software.

`keys_for_config(config)` gives the BibTeX keys a run's config calls for
(config.data.name, config.model.name, config.optim, config.data.augment);
`bibtex(keys)` the references.bib text of those entries. `CITE` maps the
things a paper names to their keys, so the generated text cites what it
names (`cite_for_data`, `cite_for_model`).
"""

import os

ENTRIES = {
    "lecun1998mnist": """@article{lecun1998mnist,
  author = {LeCun, Yann and Bottou, L{\\'e}on and Bengio, Yoshua and Haffner, Patrick},
  title = {Gradient-Based Learning Applied to Document Recognition},
  journal = {Proceedings of the IEEE},
  volume = {86}, number = {11}, pages = {2278--2324}, year = {1998}}""",
    "krizhevsky2009cifar": """@techreport{krizhevsky2009cifar,
  author = {Krizhevsky, Alex},
  title = {Learning Multiple Layers of Features from Tiny Images},
  institution = {University of Toronto}, year = {2009}}""",
    "yang2023medmnist": """@article{yang2023medmnist,
  author = {Yang, Jiancheng and Shi, Rui and Wei, Donglai and Liu, Zequan and Zhao, Lin and Ke, Bilian and Pfister, Hanspeter and Ni, Bingbing},
  title = {{MedMNIST v2} -- A Large-Scale Lightweight Benchmark for {2D} and {3D} Biomedical Image Classification},
  journal = {Scientific Data}, volume = {10}, number = {1}, pages = {41}, year = {2023}}""",
    "wang2017chestxray": """@inproceedings{wang2017chestxray,
  author = {Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and Bagheri, Mohammadhadi and Summers, Ronald M.},
  title = {{ChestX-ray8}: Hospital-Scale Chest {X}-Ray Database and Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages = {2097--2106}, year = {2017}}""",
    "rajpurkar2017chexnet": """@article{rajpurkar2017chexnet,
  author = {Rajpurkar, Pranav and Irvin, Jeremy and Zhu, Kaylie and Yang, Brandon and Mehta, Hershel and Duan, Tony and Ding, Daisy and Bagul, Aarti and Langlotz, Curtis and Shpanskaya, Katie and Lungren, Matthew P. and Ng, Andrew Y.},
  title = {{CheXNet}: Radiologist-Level Pneumonia Detection on Chest {X}-Rays with Deep Learning},
  journal = {arXiv preprint arXiv:1711.05225}, year = {2017}}""",
    "dau2019ucr": """@article{dau2019ucr,
  author = {Dau, Hoang Anh and Bagnall, Anthony and Kamgar, Kaveh and Yeh, Chin-Chia Michael and Zhu, Yan and Gharghabi, Shaghayegh and Ratanamahatana, Chotirat Ann and Keogh, Eamonn},
  title = {The {UCR} Time Series Archive},
  journal = {IEEE/CAA Journal of Automatica Sinica},
  volume = {6}, number = {6}, pages = {1293--1305}, year = {2019}}""",
    "he2016resnet": """@inproceedings{he2016resnet,
  author = {He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian},
  title = {Deep Residual Learning for Image Recognition},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages = {770--778}, year = {2016}}""",
    "simonyan2015vgg": """@inproceedings{simonyan2015vgg,
  author = {Simonyan, Karen and Zisserman, Andrew},
  title = {Very Deep Convolutional Networks for Large-Scale Image Recognition},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2015}}""",
    "huang2017densenet": """@inproceedings{huang2017densenet,
  author = {Huang, Gao and Liu, Zhuang and van der Maaten, Laurens and Weinberger, Kilian Q.},
  title = {Densely Connected Convolutional Networks},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages = {4700--4708}, year = {2017}}""",
    "krizhevsky2012alexnet": """@inproceedings{krizhevsky2012alexnet,
  author = {Krizhevsky, Alex and Sutskever, Ilya and Hinton, Geoffrey E.},
  title = {{ImageNet} Classification with Deep Convolutional Neural Networks},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  volume = {25}, year = {2012}}""",
    "ronneberger2015unet": """@inproceedings{ronneberger2015unet,
  author = {Ronneberger, Olaf and Fischer, Philipp and Brox, Thomas},
  title = {{U-Net}: Convolutional Networks for Biomedical Image Segmentation},
  booktitle = {Medical Image Computing and Computer-Assisted Intervention (MICCAI)},
  pages = {234--241}, year = {2015}}""",
    "tran2018r3d": """@inproceedings{tran2018r3d,
  author = {Tran, Du and Wang, Heng and Torresani, Lorenzo and Ray, Jamie and LeCun, Yann and Paluri, Manohar},
  title = {A Closer Look at Spatiotemporal Convolutions for Action Recognition},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages = {6450--6459}, year = {2018}}""",
    "zhou2019centernet": """@article{zhou2019centernet,
  author = {Zhou, Xingyi and Wang, Dequan and Kr{\\"a}henb{\\"u}hl, Philipp},
  title = {Objects as Points},
  journal = {arXiv preprint arXiv:1904.07850}, year = {2019}}""",
    "wang2017tsc": """@inproceedings{wang2017tsc,
  author = {Wang, Zhiguang and Yan, Weizhong and Oates, Tim},
  title = {Time Series Classification from Scratch with Deep Neural Networks: A Strong Baseline},
  booktitle = {International Joint Conference on Neural Networks (IJCNN)},
  pages = {1578--1585}, year = {2017}}""",
    "kingma2015adam": """@inproceedings{kingma2015adam,
  author = {Kingma, Diederik P. and Ba, Jimmy},
  title = {Adam: A Method for Stochastic Optimization},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2015}}""",
    "loshchilov2019adamw": """@inproceedings{loshchilov2019adamw,
  author = {Loshchilov, Ilya and Hutter, Frank},
  title = {Decoupled Weight Decay Regularization},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2019}}""",
    "loshchilov2017sgdr": """@inproceedings{loshchilov2017sgdr,
  author = {Loshchilov, Ilya and Hutter, Frank},
  title = {{SGDR}: Stochastic Gradient Descent with Warm Restarts},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2017}}""",
    "smith2019onecycle": """@inproceedings{smith2019onecycle,
  author = {Smith, Leslie N. and Topin, Nicholay},
  title = {Super-Convergence: Very Fast Training of Neural Networks Using Large Learning Rates},
  booktitle = {Artificial Intelligence and Machine Learning for Multi-Domain Operations Applications},
  volume = {11006}, pages = {369--386}, organization = {SPIE}, year = {2019}}""",
    "sutskever2013momentum": """@inproceedings{sutskever2013momentum,
  author = {Sutskever, Ilya and Martens, James and Dahl, George and Hinton, Geoffrey},
  title = {On the Importance of Initialization and Momentum in Deep Learning},
  booktitle = {International Conference on Machine Learning (ICML)},
  pages = {1139--1147}, year = {2013}}""",
    "ioffe2015batchnorm": """@inproceedings{ioffe2015batchnorm,
  author = {Ioffe, Sergey and Szegedy, Christian},
  title = {Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift},
  booktitle = {International Conference on Machine Learning (ICML)},
  pages = {448--456}, year = {2015}}""",
    "zhang2018mixup": """@inproceedings{zhang2018mixup,
  author = {Zhang, Hongyi and Cisse, Moustapha and Dauphin, Yann N. and Lopez-Paz, David},
  title = {mixup: Beyond Empirical Risk Minimization},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2018}}""",
    "yun2019cutmix": """@inproceedings{yun2019cutmix,
  author = {Yun, Sangdoo and Han, Dongyoon and Oh, Seong Joon and Chun, Sanghyuk and Choe, Junsuk and Yoo, Youngjoon},
  title = {{CutMix}: Regularization Strategy to Train Strong Classifiers with Localizable Features},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  pages = {6023--6032}, year = {2019}}""",
    "devries2017cutout": """@article{devries2017cutout,
  author = {DeVries, Terrance and Taylor, Graham W.},
  title = {Improved Regularization of Convolutional Neural Networks with Cutout},
  journal = {arXiv preprint arXiv:1708.04552}, year = {2017}}""",
    "yosinski2014transfer": """@inproceedings{yosinski2014transfer,
  author = {Yosinski, Jason and Clune, Jeff and Bengio, Yoshua and Lipson, Hod},
  title = {How Transferable Are Features in Deep Neural Networks?},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  volume = {27}, year = {2014}}""",
    "jax2018github": """@misc{jax2018github,
  author = {Bradbury, James and Frostig, Roy and Hawkins, Peter and Johnson, Matthew James and Leary, Chris and Maclaurin, Dougal and Necula, George and Paszke, Adam and Vander{P}las, Jake and Wanderman-{M}ilne, Skye and Zhang, Qiao},
  title = {{JAX}: Composable Transformations of {P}ython+{N}um{P}y Programs},
  howpublished = {\\url{http://github.com/jax-ml/jax}}, year = {2018}}""",
    "flax2020github": """@misc{flax2020github,
  author = {Heek, Jonathan and Levskaya, Anselm and Oliver, Avital and Ritter, Marvin and Rondepierre, Bertrand and Steiner, Andreas and van {Z}ee, Marc},
  title = {{F}lax: A Neural Network Library and Ecosystem for {JAX}},
  howpublished = {\\url{http://github.com/google/flax}}, year = {2020}}""",
    "deepmind2020jax": """@misc{deepmind2020jax,
  author = {{DeepMind}},
  title = {The {DeepMind} {JAX} Ecosystem ({Optax})},
  howpublished = {\\url{http://github.com/google-deepmind}}, year = {2020}}""",
}

# What the generated text names -> its key.
DATA_CITES = {"mnist": "lecun1998mnist", "mnist_multidigit": "lecun1998mnist",
              "mnist_digit_masks": "lecun1998mnist",
              "mnist_localization": "lecun1998mnist",
              "mnist_detection": "lecun1998mnist",
              "moving_digits": "lecun1998mnist",
              "cifar10": "krizhevsky2009cifar",
              "pneumonia": "yang2023medmnist",
              "chestxray14": "wang2017chestxray", "ucr": "dau2019ucr"}
DATA_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10",
              "pneumonia": "PneumoniaMNIST", "chestxray14": "ChestX-ray14",
              "ucr": "the UCR archive", "npz": "an .npz dataset",
              "image_folder": "an image folder", "csv": "CSV-listed images",
              "tfds": "a TFDS dataset", "moving_digits": "moving MNIST digits",
              "mnist_multidigit": "MNIST digits on canvases",
              "mnist_digit_masks": "MNIST digit masks",
              "mnist_localization": "MNIST digit localisation",
              "mnist_detection": "MNIST digit detection"}
# Model-name prefix -> key (longest prefix wins).
MODEL_CITES = {"lenet": "lecun1998mnist", "alexnet": "krizhevsky2012alexnet",
               "vgg": "simonyan2015vgg", "resnet1d": "wang2017tsc",
               "resnet": "he2016resnet", "densenet": "huang2017densenet",
               "unet": "ronneberger2015unet", "r3d": "tran2018r3d",
               "centernet": "zhou2019centernet", "cnn1d": "wang2017tsc"}
OPTIM_CITES = {"adam": "kingma2015adam", "adamw": "loshchilov2019adamw",
               "momentum": "sutskever2013momentum",
               "nesterov": "sutskever2013momentum"}
SCHEDULE_CITES = {"cosine": "loshchilov2017sgdr",
                  "warmup_cosine": "loshchilov2017sgdr",
                  "one_cycle": "smith2019onecycle"}
AUGMENT_CITES = {"mixup_alpha": "zhang2018mixup",
                 "cutmix_alpha": "yun2019cutmix", "cutout": "devries2017cutout"}
SOFTWARE = ("jax2018github", "flax2020github", "deepmind2020jax")


def cite_for_data(name):
  return DATA_CITES.get(name)


def cite_for_model(name):
  matches = [p for p in MODEL_CITES if name.startswith(p)]
  return MODEL_CITES[max(matches, key=len)] if matches else None


def data_name(data_config):
  """A readable name of the dataset (the bundled copy's, or the source)."""
  name = data_config.get("name", "?")
  if name == "tfds" and data_config.get("tfds_name"):
    return data_config["tfds_name"]
  if name in ("npz", "image_folder", "csv") and data_config.get("data_dir"):
    return os.path.basename(os.path.normpath(data_config["data_dir"]))
  if name == "ucr" and data_config.get("ucr_name"):
    return f"{data_config['ucr_name']} (UCR)"
  return DATA_NAMES.get(name, name)


def keys_for_config(config):
  """The BibTeX keys a run's config (a dict) calls for, in order."""
  keys = []
  data = config.get("data", {})
  model = config.get("model", {})
  optim = config.get("optim", {})
  for key in (cite_for_data(data.get("name", "")),
              cite_for_model(model.get("name", "")),
              "ioffe2015batchnorm" if model.get("use_batchnorm") else None,
              OPTIM_CITES.get(optim.get("name")),
              SCHEDULE_CITES.get(optim.get("schedule"))):
    if key:
      keys.append(key)
  for aug, key in AUGMENT_CITES.items():
    if (data.get("augment") or {}).get(aug):
      keys.append(key)
  if (config.get("transfer") or {}).get("init_from"):
    keys.append("yosinski2014transfer")
  if data.get("name") == "chestxray14":
    keys.append("rajpurkar2017chexnet")
  return keys


def all_keys(configs):
  """The keys of every config, each once, then the software's."""
  keys = []
  for config in configs:
    keys += [k for k in keys_for_config(config) if k not in keys]
  return keys + [k for k in SOFTWARE if k not in keys]


def bibtex(keys):
  """references.bib text of `keys`."""
  return "\n\n".join(ENTRIES[k] for k in keys) + "\n"


def cite(key):
  """'~\\citep{key}', or '' for None."""
  return f"~\\citep{{{key}}}" if key else ""
