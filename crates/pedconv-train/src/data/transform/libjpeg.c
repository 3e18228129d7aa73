/* The part of a JPEG that a crop needs, decoded by libjpeg-turbo (the `libjpeg-turbo` feature).
 *
 * libjpeg reports a fatal error by calling `error_exit`, which by default ends the process:
 * here it formats the message and jumps back to the function that called into libjpeg, so
 * every error reaches Rust as a message. Warnings (data cut short, which libjpeg fills with
 * grey) are not printed. No Rust frame lies between a `setjmp` and its `longjmp`. */

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#ifndef LIBJPEG_TURBO_VERSION
#error "the libjpeg-turbo feature needs libjpeg-turbo's headers (Debian: libjpeg62-turbo-dev)"
#endif

/* Fits libjpeg's messages (JMSG_LENGTH_MAX is 200). */
#define MESSAGE_LENGTH 256

struct pedconv_jpeg {
    struct jpeg_decompress_struct info;
    struct jpeg_error_mgr errors;
    jmp_buf on_error;
    char message[MESSAGE_LENGTH];
};

static void exit_with_message(j_common_ptr info) {
    struct pedconv_jpeg *jpeg = (struct pedconv_jpeg *)info->client_data;
    info->err->format_message(info, jpeg->message);
    longjmp(jpeg->on_error, 1);
}

static void discard_message(j_common_ptr info) { (void)info; }

/* Reads the headers into `jpeg`, whose error manager is set: 0, or -1 with its message. */
static int read_header(struct pedconv_jpeg *jpeg, const uint8_t *bytes, size_t length) {
    if (setjmp(jpeg->on_error)) {
        return -1;
    }
    jpeg_create_decompress(&jpeg->info);
    jpeg_mem_src(&jpeg->info, bytes, (unsigned long)length);
    jpeg_read_header(&jpeg->info, TRUE);
    return 0;
}

/* Reads the headers of the `length` bytes at `bytes`, which must outlive the returned decoder.
 * NULL with `message` filled on error (or an empty message when memory ran out). */
struct pedconv_jpeg *pedconv_jpeg_open(const uint8_t *bytes, size_t length,
                                       char message[MESSAGE_LENGTH]) {
    struct pedconv_jpeg *jpeg = calloc(1, sizeof *jpeg);
    if (jpeg == NULL) {
        message[0] = '\0';
        return NULL;
    }
    jpeg->info.err = jpeg_std_error(&jpeg->errors);
    jpeg->errors.error_exit = exit_with_message;
    jpeg->errors.output_message = discard_message;
    jpeg->info.client_data = jpeg;
    if (read_header(jpeg, bytes, length) != 0) {
        memcpy(message, jpeg->message, MESSAGE_LENGTH);
        jpeg_destroy_decompress(&jpeg->info);
        free(jpeg);
        return NULL;
    }
    return jpeg;
}

/* The image's width and height; whether libjpeg converts its colours to RGB (luma and YCbCr
 * images: not CMYK or YCCK ones). */
void pedconv_jpeg_describe(const struct pedconv_jpeg *jpeg, uint32_t *width, uint32_t *height,
                           int *converts_to_rgb) {
    *width = jpeg->info.image_width;
    *height = jpeg->info.image_height;
    J_COLOR_SPACE space = jpeg->info.jpeg_color_space;
    *converts_to_rgb = space == JCS_GRAYSCALE || space == JCS_YCbCr || space == JCS_RGB;
}

/* Decodes rows `top .. top + height` of the columns around `left .. left + width` as RGB into
 * the `capacity` bytes at `pixels`, one row of `*columns` pixels after the other, the first
 * being column `*first_column`. Only the blocks of those columns are transformed; the rows below
 * are not read. libjpeg starts the columns at a block boundary and computes the outermost
 * columns as the image's edges, where its chroma upsampling repeats the last sample: the
 * columns asked for reach one chroma sample beyond the region on either side, so that the
 * region's pixels are the whole image's. 0 on success; -1 with `message` filled on error. */
int pedconv_jpeg_decode_region(struct pedconv_jpeg *jpeg, uint32_t left, uint32_t width,
                               uint32_t top, uint32_t height, uint8_t *pixels, size_t capacity,
                               uint32_t *first_column, uint32_t *columns,
                               char message[MESSAGE_LENGTH]) {
    if (setjmp(jpeg->on_error)) {
        memcpy(message, jpeg->message, MESSAGE_LENGTH);
        return -1;
    }
    jpeg->info.out_color_space = JCS_RGB;
    jpeg->info.dct_method = JDCT_ISLOW;
    jpeg_start_decompress(&jpeg->info);
    uint32_t margin = (uint32_t)jpeg->info.max_h_samp_factor;
    JDIMENSION x = left > margin ? left - margin : 0;
    JDIMENSION end = left + width + margin;
    if (end > jpeg->info.output_width) {
        end = jpeg->info.output_width;
    }
    JDIMENSION decoded = end - x;
    jpeg_crop_scanline(&jpeg->info, &x, &decoded);
    *first_column = x;
    *columns = decoded;
    size_t stride = (size_t)decoded * 3;
    if (stride * height > capacity) {
        snprintf(message, MESSAGE_LENGTH, "%u columns from %u do not fit %zu bytes", decoded, x,
                 capacity);
        jpeg_abort_decompress(&jpeg->info);
        return -1;
    }
    if (top > 0) {
        jpeg_skip_scanlines(&jpeg->info, top);
    }
    for (uint32_t row = 0; row < height;) {
        JSAMPROW at = pixels + row * stride;
        JDIMENSION read = jpeg_read_scanlines(&jpeg->info, &at, 1);
        if (read == 0) {
            snprintf(message, MESSAGE_LENGTH, "libjpeg stopped at row %u", top + row);
            jpeg_abort_decompress(&jpeg->info);
            return -1;
        }
        row += read;
    }
    jpeg_abort_decompress(&jpeg->info);
    return 0;
}

void pedconv_jpeg_close(struct pedconv_jpeg *jpeg) {
    jpeg_destroy_decompress(&jpeg->info);
    free(jpeg);
}
