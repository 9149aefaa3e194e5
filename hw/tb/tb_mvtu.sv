// Unit-test wrapper: bnnc_mvtu with in_data = {row, col, vector}.
module tb_mvtu #(
    parameter int MATRIX_ROWS = 4,
    parameter int MATRIX_COLS = 8,
    parameter int PE = 2,
    parameter int SIMD = 4,
    parameter int INPUT_BITS = 1,
    parameter int SUM_BITS = 8,
    parameter int THRESHOLDS = 1,
    parameter int TABLE_BITS = 8,
    parameter int ACC_BITS = 8,
    parameter int GAIN = -2,
    parameter int BORDER_CLASSES = 1,
    parameter int COL_CLASS_COUNT = 1,
    parameter int OUT_ROWS = 1,
    parameter int OUT_COLS = 1,
    parameter int ROW_CLASS_BITS = 1,
    parameter int COL_CLASS_BITS = 1,
    parameter logic [OUT_ROWS*ROW_CLASS_BITS-1:0] ROW_CLASSES = '0,
    parameter logic [OUT_COLS*COL_CLASS_BITS-1:0] COL_CLASSES = '0,
    parameter WEIGHT_FILE = "w.mem",
    parameter TABLE_FILE = "t.mem",
    parameter int LEVEL_BASE = 0,
    parameter int LEVEL_STEP = 1,
    parameter int GAINS_IN_TABLE = 0,
    parameter int GAIN_BITS = 1,
    parameter int VALUE_BITS = 1,
    parameter int MAC = 0,
    parameter int WEIGHT_BITS = 1,
    parameter int WEIGHT_BANK_DEPTH = 512,
    parameter int REQUANTIZE = 0,
    parameter int SHIFT = 0,
    parameter int PRE_SHIFT = 0,
    parameter int OUT_MIN = 0,
    parameter int OUT_MAX = 0,
    parameter int PRODUCT_BITS = 1,
    parameter int OUT_BITS = THRESHOLDS == 0 ? ACC_BITS : $clog2(THRESHOLDS + 1),
    localparam int RB = OUT_ROWS > 1 ? $clog2(OUT_ROWS) : 1,
    localparam int CB = OUT_COLS > 1 ? $clog2(OUT_COLS) : 1
) (
    input  logic                   clk,
    input  logic                   rst_n,
    input  logic                   in_valid,
    output logic                   in_ready,
    input  logic [RB+CB+MATRIX_COLS*INPUT_BITS-1:0] in_data,
    output logic                   out_valid,
    input  logic                   out_ready,
    output logic [      MATRIX_ROWS*OUT_BITS-1:0] out_data
);
  bnnc_mvtu #(
      .MATRIX_ROWS(MATRIX_ROWS), .MATRIX_COLS(MATRIX_COLS), .PE(PE), .SIMD(SIMD), .INPUT_BITS(INPUT_BITS), .SUM_BITS(SUM_BITS), .THRESHOLDS(THRESHOLDS), .TABLE_BITS(TABLE_BITS), .ACC_BITS(ACC_BITS),
      .GAIN(GAIN), .BORDER_CLASSES(BORDER_CLASSES), .COL_CLASS_COUNT(COL_CLASS_COUNT), .OUT_ROWS(OUT_ROWS), .OUT_COLS(OUT_COLS), .ROW_CLASS_BITS(ROW_CLASS_BITS), .COL_CLASS_BITS(COL_CLASS_BITS),
      .ROW_CLASSES(ROW_CLASSES), .COL_CLASSES(COL_CLASSES), .WEIGHT_FILE(WEIGHT_FILE), .TABLE_FILE(TABLE_FILE), .LEVEL_BASE(LEVEL_BASE), .LEVEL_STEP(LEVEL_STEP), .OUT_BITS(OUT_BITS),
      .GAINS_IN_TABLE(GAINS_IN_TABLE), .GAIN_BITS(GAIN_BITS), .VALUE_BITS(VALUE_BITS), .MAC(MAC), .WEIGHT_BITS(WEIGHT_BITS),
      .WEIGHT_BANK_DEPTH(WEIGHT_BANK_DEPTH), .REQUANTIZE(REQUANTIZE), .SHIFT(SHIFT), .PRE_SHIFT(PRE_SHIFT), .OUT_MIN(OUT_MIN),
      .OUT_MAX(OUT_MAX), .PRODUCT_BITS(PRODUCT_BITS)
  ) dut (
      .clk(clk), .rst_n(rst_n), .in_valid(in_valid), .in_ready(in_ready),
      .in_data(in_data[MATRIX_COLS*INPUT_BITS-1:0]), .in_row(in_data[RB+CB+MATRIX_COLS*INPUT_BITS-1-:RB]), .in_col(in_data[CB+MATRIX_COLS*INPUT_BITS-1-:CB]),
      .out_valid(out_valid), .out_ready(out_ready), .out_data(out_data)
  );
endmodule
