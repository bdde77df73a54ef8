/*
 * Checks the patched disk-spec parser (libxlutil) and libxl's disk backend
 * code on the disk lines xl hands them, without a running Xen: each case
 * parses a spec with xlu_disk_parse(), then runs libxl's own backend
 * selection (libxl__device_disk_set_backend) and, for rustbk, the params
 * libxl writes and reads back. Linked against the libraries build.sh made;
 * see tools/libxl/README.md.
 *
 * Prints one line per check and exits 1 if any fails.
 */

#include "libxl_osdeps.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "libxl_internal.h"
#include "libxlutil.h"

static int failures;
static int checks;

static void check(int ok, const char *what, ...)
{
    va_list ap;

    checks++;
    if (!ok)
        failures++;
    printf("%s: ", ok ? "ok  " : "FAIL");
    va_start(ap, what);
    vprintf(what, ap);
    va_end(ap);
    printf("\n");
}

static int same(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return !strcmp(a, b);
}

/* The parts of a disk a case expects after parsing. */
struct parsed {
    libxl_disk_backend backend;
    libxl_disk_format format;
    const char *target;
    const char *vdev;
    const char *script;
};

/* Parses spec into disk (initialised here); returns xlu_disk_parse's code. */
static int parse(const char *spec, libxl_device_disk *disk)
{
    XLU_Config *cfg = xlu_cfg_init(stderr, "disk_spec_test");
    int rc;

    libxl_device_disk_init(disk);
    rc = xlu_disk_parse(cfg, 1, &spec, disk);
    xlu_cfg_destroy(cfg);
    return rc;
}

static void expect_parsed(const char *spec, const struct parsed *want)
{
    libxl_device_disk disk;
    int rc = parse(spec, &disk);

    check(rc == 0, "parses: %s", spec);
    if (rc == 0) {
        check(disk.backend == want->backend, "  backend %s (want %s)",
              libxl_disk_backend_to_string(disk.backend),
              libxl_disk_backend_to_string(want->backend));
        check(disk.format == want->format, "  format %s (want %s)",
              libxl_disk_format_to_string(disk.format),
              libxl_disk_format_to_string(want->format));
        check(same(disk.pdev_path, want->target), "  target %s (want %s)",
              disk.pdev_path ? : "(none)", want->target ? : "(none)");
        check(same(disk.vdev, want->vdev), "  vdev %s (want %s)",
              disk.vdev ? : "(none)", want->vdev);
        check(same(disk.script, want->script), "  script %s (want %s)",
              disk.script ? : "(none)", want->script ? : "(none)");
    }
    libxl_device_disk_dispose(&disk);
}

static void expect_refused(const char *spec)
{
    libxl_device_disk disk;
    int rc = parse(spec, &disk);

    check(rc != 0, "refused by the parser: %s", spec);
    libxl_device_disk_dispose(&disk);
}

static void parser_cases(void)
{
    struct parsed qcow2 = { LIBXL_DISK_BACKEND_RUSTBK, LIBXL_DISK_FORMAT_QCOW2,
                            "/srv/a.qcow2", "xvda", NULL };
    struct parsed thin = { LIBXL_DISK_BACKEND_RUSTBK, LIBXL_DISK_FORMAT_RAW,
                           "thin:/srv/pool:vm1", "xvdb", NULL };
    struct parsed null = { LIBXL_DISK_BACKEND_RUSTBK, LIBXL_DISK_FORMAT_RAW,
                           "null:8G", "xvdc", NULL };
    struct parsed phy_script = { LIBXL_DISK_BACKEND_PHY, LIBXL_DISK_FORMAT_RAW,
                                 "/srv/a.img", "xvda", "rustbk" };
    struct parsed legacy = { LIBXL_DISK_BACKEND_UNKNOWN,
                             LIBXL_DISK_FORMAT_RAW, "/srv/a.img", "xvda",
                             NULL };
    struct parsed qdisk = { LIBXL_DISK_BACKEND_QDISK, LIBXL_DISK_FORMAT_QCOW2,
                            "/srv/a.qcow2", "xvda", NULL };

    expect_parsed("format=qcow2, vdev=xvda, access=rw, backendtype=rustbk, "
                  "target=/srv/a.qcow2", &qcow2);
    expect_parsed("vdev=xvdb, backendtype=rustbk, target=thin:/srv/pool:vm1",
                  &thin);
    expect_parsed("vdev=xvdc, access=rw, backendtype=rustbk, target=null:8G",
                  &null);
    /* What worked before the series still parses the same way. */
    expect_parsed("format=raw, vdev=xvda, access=rw, backendtype=phy, "
                  "script=rustbk, target=/srv/a.img", &phy_script);
    expect_parsed("/srv/a.img,raw,xvda,rw", &legacy);
    expect_parsed("format=qcow2, vdev=xvda, backendtype=qdisk, "
                  "target=/srv/a.qcow2", &qdisk);
    expect_refused("vdev=xvda, backendtype=rustbkx, target=/srv/a.img");
    expect_refused("vdev=xvda, backendtype=, target=/srv/a.img");
    expect_refused("format=qcow3, vdev=xvda, backendtype=rustbk, "
                   "target=/srv/a.qcow3");
}

/* The regenerated scanner knows the .l's "untrusted" rule. */
static void untrusted_case(void)
{
    const char *spec = "vdev=xvda, untrusted, backendtype=rustbk, "
                       "target=/srv/a.img";
    libxl_device_disk disk;
    int rc = parse(spec, &disk);

    check(rc == 0 && !libxl_defbool_is_default(disk.trusted) &&
          !libxl_defbool_val(disk.trusted), "untrusted is read: %s", spec);
    libxl_device_disk_dispose(&disk);
}

static void name_cases(void)
{
    libxl_disk_backend b = LIBXL_DISK_BACKEND_UNKNOWN;

    check(same(libxl_disk_backend_to_string(LIBXL_DISK_BACKEND_RUSTBK),
               "rustbk"), "IDL names LIBXL_DISK_BACKEND_RUSTBK \"rustbk\"");
    check(libxl_disk_backend_from_string("rustbk", &b) == 0 &&
          b == LIBXL_DISK_BACKEND_RUSTBK, "IDL reads \"rustbk\" (JSON)");
    b = LIBXL_DISK_BACKEND_UNKNOWN;
    check(libxl_string_to_backend(NULL, "rustbk", &b) == 0 &&
          b == LIBXL_DISK_BACKEND_RUSTBK,
          "xenstore type \"rustbk\" reads back as RUSTBK");
    b = LIBXL_DISK_BACKEND_UNKNOWN;
    check(libxl_string_to_backend(NULL, "phy", &b) == 0 &&
          b == LIBXL_DISK_BACKEND_PHY, "xenstore type \"phy\" still PHY");
    check(same(libxl__device_disk_string_of_backend(LIBXL_DISK_BACKEND_RUSTBK),
               "rustbk"), "backend type key written for RUSTBK is \"rustbk\"");
}

/* Parses spec and runs libxl's backend choice on it, as device_disk_add does
 * through libxl__device_disk_setdefault. Returns the rc of that choice. */
static int choose(libxl__gc *gc, const char *spec, libxl_device_disk *disk)
{
    if (parse(spec, disk)) {
        check(0, "parses: %s", spec);
        return ERROR_INVAL;
    }
    libxl_defbool_setdefault(&disk->colo_enable, false);
    disk->specification = LIBXL_DISK_SPECIFICATION_XEN;
    return libxl__device_disk_set_backend(gc, disk);
}

/* A rustbk disk libxl accepts: its params, and the disk read back from them. */
static void expect_accepted(libxl__gc *gc, const char *spec,
                            const char *params)
{
    libxl_device_disk disk, back;
    int rc = choose(gc, spec, &disk);
    char *got;

    check(rc == 0 && disk.backend == LIBXL_DISK_BACKEND_RUSTBK,
          "libxl accepts: %s (rc %d, backend %s)", spec, rc,
          libxl_disk_backend_to_string(disk.backend));
    got = libxl__device_disk_rustbk_params(gc, &disk);
    check(same(got, params), "  params %s (want %s)", got ? : "(none)", params);

    libxl_device_disk_init(&back);
    libxl__device_disk_rustbk_from_params(gc, &back, got);
    check(back.format == disk.format && same(back.pdev_path, disk.pdev_path),
          "  read back from params: format %s, target %s",
          libxl_disk_format_to_string(back.format), back.pdev_path);
    libxl_device_disk_dispose(&back);
    libxl_device_disk_dispose(&disk);
}

static void expect_choice(libxl__gc *gc, const char *spec, int want_rc,
                          libxl_disk_backend want)
{
    libxl_device_disk disk;
    int rc = choose(gc, spec, &disk);

    check(rc == want_rc && (rc || disk.backend == want),
          "libxl backend choice for %s: rc %d backend %s (want rc %d, %s)",
          spec, rc, libxl_disk_backend_to_string(disk.backend), want_rc,
          libxl_disk_backend_to_string(want));
    libxl_device_disk_dispose(&disk);
}

static void local_path_cases(libxl__gc *gc)
{
    libxl_device_disk disk;
    char *path;

    choose(gc, "vdev=xvdb, backendtype=rustbk, target=thin:/srv/pool:vm1",
           &disk);
    path = libxl__device_disk_find_local_path(gc, INVALID_DOMID, &disk,
                                              false);
    check(path == NULL, "a thin volume has no local path (got %s)",
          path ? : "none");
    libxl_device_disk_dispose(&disk);

    choose(gc, "format=raw, vdev=xvda, backendtype=rustbk, target=/srv/a.img",
           &disk);
    path = libxl__device_disk_find_local_path(gc, INVALID_DOMID, &disk,
                                              false);
    check(same(path, "/srv/a.img"), "a raw file is its own local path (got %s)",
          path ? : "none");
    libxl_device_disk_dispose(&disk);
}

static void libxl_cases(libxl__gc *gc, const char *existing_file)
{
    char *spec;

    /* Targets libxl cannot stat: rustbk checks them, not libxl. */
    expect_accepted(gc, "format=qcow2, vdev=xvda, access=rw, "
                    "backendtype=rustbk, target=/nonexistent/a.qcow2",
                    "qcow2:/nonexistent/a.qcow2");
    expect_accepted(gc, "format=raw, vdev=xvda, backendtype=rustbk, "
                    "target=/nonexistent/a.img", "raw:/nonexistent/a.img");
    expect_accepted(gc, "vdev=xvdb, backendtype=rustbk, "
                    "target=thin:/srv/pool:vm1", "thin:/srv/pool:vm1");
    expect_accepted(gc, "vdev=xvdc, backendtype=rustbk, target=null:8G",
                    "null:8G");
    expect_accepted(gc, "format=raw, vdev=xvdd, backendtype=rustbk, "
                    "script=rustbk, target=/nonexistent/b.img",
                    "raw:/nonexistent/b.img");

    /* Formats rustbk does not serve are refused by libxl. */
    expect_choice(gc, "format=vhd, vdev=xvda, backendtype=rustbk, "
                  "target=/srv/a.vhd", ERROR_INVAL, LIBXL_DISK_BACKEND_RUSTBK);
    expect_choice(gc, "format=qcow2, vdev=xvda, backendtype=rustbk, "
                  "target=thin:/srv/pool:vm1", ERROR_INVAL,
                  LIBXL_DISK_BACKEND_RUSTBK);

    /* The old backends behave as before. */
    expect_choice(gc, "format=raw, vdev=xvda, backendtype=phy, "
                  "target=/nonexistent/a.img", ERROR_INVAL,
                  LIBXL_DISK_BACKEND_PHY);
    expect_choice(gc, "format=raw, vdev=xvda, backendtype=phy, "
                  "script=rustbk, target=/nonexistent/a.img", 0,
                  LIBXL_DISK_BACKEND_PHY);
    expect_choice(gc, "format=qcow2, vdev=xvda, backendtype=qdisk, "
                  "target=/srv/a.qcow2", 0, LIBXL_DISK_BACKEND_QDISK);
    /* libxl never picks rustbk on its own: a raw file goes to phy, a
     * qcow2 file to qdisk. */
    spec = GCSPRINTF("format=raw, vdev=xvda, target=%s", existing_file);
    expect_choice(gc, spec, 0, LIBXL_DISK_BACKEND_PHY);
    spec = GCSPRINTF("format=qcow2, vdev=xvda, target=%s", existing_file);
    expect_choice(gc, spec, 0, LIBXL_DISK_BACKEND_QDISK);

    local_path_cases(gc);
}

/* A libxl context just good enough for the gc and logging: no Xen. */
static void fake_ctx(libxl_ctx *ctx, xentoollog_logger *lg)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->lg = lg;
    LIBXL_INIT_GC(ctx->nogc_gc, ctx);
}

int main(int argc, char **argv)
{
    xentoollog_logger_stdiostream *lg;
    libxl_ctx ctx;

    if (argc != 2) {
        fprintf(stderr, "usage: %s EXISTING_FILE\n", argv[0]);
        return 2;
    }
    lg = xtl_createlogger_stdiostream(stderr, XTL_ERROR, 0);
    fake_ctx(&ctx, (xentoollog_logger *)lg);

    parser_cases();
    untrusted_case();
    name_cases();
    {
        GC_INIT(&ctx);
        libxl_cases(gc, argv[1]);
        GC_FREE;
    }

    printf("%d checks, %d failed\n", checks, failures);
    xtl_logger_destroy((xentoollog_logger *)lg);
    return failures ? 1 : 0;
}
