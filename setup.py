from setuptools import Extension, setup

# The wire's inner loop in C (greentap/_relay.c).  Optional: without a
# compiler the build goes on and greentap uses its pure-Python loop.
setup(ext_modules=[Extension("greentap._relay", ["greentap/_relay.c"], optional=True)])
