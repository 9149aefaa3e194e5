// Unit-test wrapper: a record {b, a} forks into two branches of different FIFO depths (A_DEPTH,
// B_DEPTH), each branch takes its half, and bnnc_add joins them.
`default_nettype none
module tb_residual #(
    parameter int C = 1,
    parameter int A_BITS = 8,
    parameter int B_BITS = 8,
    parameter int OUT_BITS = 9,
    parameter int SHIFT_A = 0,
    parameter int SHIFT_B = 0,
    parameter int ROUND_SHIFT = 0,
    parameter int OUT_MIN = -256,
    parameter int OUT_MAX = 255,
    parameter int A_DEPTH = 1,
    parameter int B_DEPTH = 3,
    localparam int W = C * (A_BITS + B_BITS)
) (
    input  logic                  clk,
    input  logic                  rst_n,
    input  logic                  in_valid,
    output logic                  in_ready,
    input  logic [         W-1:0] in_data,
    output logic                  out_valid,
    input  logic                  out_ready,
    output logic [C*OUT_BITS-1:0] out_data
);
  logic [1:0] f_valid, f_ready;
  logic [W-1:0] f_data;
  logic a_valid, a_ready, b_valid, b_ready;
  logic [W-1:0] a_full, b_full;
  bnnc_fork #(.WIDTH(W), .N(2)) split (
      .clk(clk), .rst_n(rst_n), .in_valid(in_valid), .in_ready(in_ready), .in_data(in_data),
      .out_valid(f_valid), .out_ready(f_ready), .out_data(f_data)
  );
  bnnc_fifo #(.WIDTH(W), .DEPTH(A_DEPTH)) a_fifo (
      .clk(clk), .rst_n(rst_n), .in_valid(f_valid[0]), .in_ready(f_ready[0]), .in_data(f_data),
      .out_valid(a_valid), .out_ready(a_ready), .out_data(a_full)
  );
  bnnc_fifo #(.WIDTH(W), .DEPTH(B_DEPTH)) b_fifo (
      .clk(clk), .rst_n(rst_n), .in_valid(f_valid[1]), .in_ready(f_ready[1]), .in_data(f_data),
      .out_valid(b_valid), .out_ready(b_ready), .out_data(b_full)
  );
  /* verilator lint_off UNUSEDSIGNAL */
  wire [W-1:0] a_unused = a_full, b_unused = b_full;
  /* verilator lint_on UNUSEDSIGNAL */
  bnnc_add #(
      .C(C), .A_BITS(A_BITS), .B_BITS(B_BITS), .OUT_BITS(OUT_BITS), .SHIFT_A(SHIFT_A), .SHIFT_B(SHIFT_B),
      .ROUND_SHIFT(ROUND_SHIFT), .OUT_MIN(OUT_MIN), .OUT_MAX(OUT_MAX)
  ) add (
      .clk(clk), .rst_n(rst_n), .a_valid(a_valid), .a_ready(a_ready), .a_data(a_full[C*A_BITS-1:0]),
      .b_valid(b_valid), .b_ready(b_ready), .b_data(b_full[W-1:C*A_BITS]),
      .out_valid(out_valid), .out_ready(out_ready), .out_data(out_data)
  );
endmodule
`default_nettype wire
