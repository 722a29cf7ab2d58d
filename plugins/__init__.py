"""Built-in plugins, each registered through the `infer_run` entry-point group like any third-party package."""
