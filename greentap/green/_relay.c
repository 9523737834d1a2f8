/*
 * greentap.green._relay: the wire's inner loop in C.
 *
 * relay_batch() moves up to `budget` frames from one fd to another: one
 * read(2) and one write(2) per frame, exactly what the pure-Python loop in
 * greentap/green/relay.py does, without the interpreter's cost per frame.
 * It never blocks (both fds are non-blocking), never waits and never touches
 * the gevent hub: it returns after `budget` frames, on EAGAIN from the
 * source, or on an error that the caller must turn into an exception.  The
 * caller yields to the hub between batches.
 *
 * A failed write is classified through the verdict table that
 * greentap/core/verdicts.py hands to set_verdicts() when the module loads:
 * the same table the Python loops use, so the two cannot disagree.  Until
 * it is set, every errno is FAILED.  A destination fd < 0 (already failed)
 * counts every frame as an error.
 *
 * It parses nothing: frames are moved as opaque bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

/* Why a batch ended. */
enum { END_BUDGET = 0, END_WAIT = 1, END_EOF = 2, END_READ_ERROR = 3, END_WRITE_ERROR = 4 };

/* greentap.core.verdicts.Verdict, in order (checked at import through VERDICTS). */
enum { V_RETRY, V_BACKPRESSURE, V_LINK_DOWN, V_REFUSED, V_UNREACHABLE, V_FAILED, V_COUNT };
static const char *verdict_names[V_COUNT] = {
    "RETRY", "BACKPRESSURE", "LINK_DOWN", "REFUSED", "UNREACHABLE", "FAILED",
};

#define TABLE_SIZE 256
static unsigned char verdicts[TABLE_SIZE];

static int
verdict_of(int err)
{
    if (err < 0 || err >= TABLE_SIZE)
        return V_FAILED;
    return verdicts[err];
}

static PyObject *
set_verdicts(PyObject *self, PyObject *arg)
{
    Py_buffer table;
    if (PyObject_GetBuffer(arg, &table, PyBUF_SIMPLE) < 0)
        return NULL;
    if (table.len != TABLE_SIZE) {
        PyBuffer_Release(&table);
        return PyErr_Format(PyExc_ValueError, "the verdict table must have %d entries",
                            TABLE_SIZE);
    }
    const unsigned char *entries = table.buf;
    for (Py_ssize_t i = 0; i < table.len; i++) {
        if (entries[i] >= V_COUNT) {
            PyBuffer_Release(&table);
            return PyErr_Format(PyExc_ValueError, "unknown verdict %d for errno %zd",
                                entries[i], i);
        }
    }
    memcpy(verdicts, entries, TABLE_SIZE);
    PyBuffer_Release(&table);
    Py_RETURN_NONE;
}

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
        int verdict;
        do {
            verdict = write(out_fd, data, (size_t)n) >= 0 ? -1 : verdict_of(errno);
        } while (verdict == V_RETRY);
        if (verdict < 0) {
            tx++;
            tx_bytes += n;
        } else if (verdict == V_BACKPRESSURE) {
            dropped++;
        } else if (verdict == V_LINK_DOWN) {
            link_down++;
        } else if (verdict != V_FAILED) {
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
    {"set_verdicts", set_verdicts, METH_O,
     "set_verdicts(table)\n\nThe errno-to-verdict table (bytes, one verdict per errno "
     "0..255) of greentap.core.verdicts."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "greentap.green._relay",
    "The wire's inner loop in C (see greentap.green.relay).", -1, methods,
};

PyMODINIT_FUNC
PyInit__relay(void)
{
    for (int i = 0; i < TABLE_SIZE; i++)
        verdicts[i] = V_FAILED;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *names = PyTuple_New(V_COUNT);
    if (names == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    for (int i = 0; i < V_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(verdict_names[i]);
        if (name == NULL) {
            Py_DECREF(names);
            Py_DECREF(m);
            return NULL;
        }
        PyTuple_SET_ITEM(names, i, name);
    }
    if (PyModule_AddObject(m, "VERDICTS", names) < 0) {
        Py_DECREF(names);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
