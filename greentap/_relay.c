/*
 * greentap._relay: the wire's inner loop in C.
 *
 * relay_batch() moves up to `budget` frames from one fd to another: one
 * read(2) and one write(2) per frame, exactly what the pure-Python loop in
 * greentap/polled.py does, without the interpreter's cost per frame.  It
 * never blocks (both fds are non-blocking), never waits and never touches
 * the gevent hub: it returns after `budget` frames, on EAGAIN from the
 * source, or on an error that the caller must turn into an exception.  The
 * caller (PolledTap.relay_to) yields to the hub between batches.
 *
 * Write errors are classified as in the Python loop: EAGAIN/ENOBUFS count as
 * dropped (backpressure), EIO as link down, EINVAL as a refused frame; any
 * other error stops the batch so the caller can report the destination as
 * failed.  A destination fd < 0 (already failed) counts every frame as an
 * error.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <unistd.h>

/* Why a batch ended. */
enum { END_BUDGET = 0, END_WAIT = 1, END_EOF = 2, END_READ_ERROR = 3, END_WRITE_ERROR = 4 };

static PyObject *
relay_batch(PyObject *self, PyObject *args)
{
    int in_fd, out_fd, budget;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "iiw*i", &in_fd, &out_fd, &buf, &budget))
        return NULL;
    long long rx = 0, rx_bytes = 0, tx = 0, tx_bytes = 0;
    long long dropped = 0, link_down = 0, errors = 0;
    int end = END_BUDGET, err = 0;
    char *data = buf.buf;
    size_t size = (size_t)buf.len;

    for (int i = 0; i < budget; i++) {
        ssize_t n = read(in_fd, data, size);
        if (n < 0) {
            if (errno == EINTR) {
                i--;
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                end = END_WAIT;
            } else {
                end = END_READ_ERROR;
                err = errno;
            }
            break;
        }
        if (n == 0) {
            end = END_EOF;
            break;
        }
        rx++;
        rx_bytes += n;
        if (out_fd < 0) {
            errors++;
            continue;
        }
        ssize_t w;
        do {
            w = write(out_fd, data, (size_t)n);
        } while (w < 0 && errno == EINTR);
        if (w >= 0) {
            tx++;
            tx_bytes += n;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
            dropped++;
        } else if (errno == EIO) {
            link_down++;
        } else if (errno == EINVAL) {
            errors++; /* this frame was refused; the next may pass */
        } else {
            end = END_WRITE_ERROR;
            err = errno;
            break; /* this frame is the caller's to count */
        }
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(iiLLLLLLL)", end, err, rx, rx_bytes, tx, tx_bytes, dropped,
                         link_down, errors);
}

static PyMethodDef methods[] = {
    {"relay_batch", relay_batch, METH_VARARGS,
     "relay_batch(in_fd, out_fd, buffer, budget) -> (end, errno, rx, rx_bytes, tx, "
     "tx_bytes, dropped, link_down, errors)\n\n"
     "Move up to `budget` frames from in_fd to out_fd through `buffer` without "
     "blocking. `end`: 0 budget spent, 1 source would block, 2 end of file, "
     "3 read error, 4 write error (`errno` says which)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "greentap._relay",
    "The wire's inner loop in C (see greentap.polled.PolledTap.relay_to).", -1, methods,
};

PyMODINIT_FUNC
PyInit__relay(void)
{
    return PyModule_Create(&module);
}
