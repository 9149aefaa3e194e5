// Residual addition of two fixed-point streams (ir.Add), element by element:
//   out = clamp(floor((a * 2**SHIFT_A + b * 2**SHIFT_B + half) / 2**ROUND_SHIFT), OUT_MIN, OUT_MAX)
// half = 2**(ROUND_SHIFT-1) when ROUND_SHIFT > 0, else 0. Elements are signed: A_BITS, B_BITS in,
// OUT_BITS out, C per pixel. A pixel leaves when both inputs hold one (a join); the result is
// registered, so the unit takes one pixel per cycle while its output is taken.
`default_nettype none
module bnnc_add #(
    parameter int C = 1,
    parameter int A_BITS = 8,
    parameter int B_BITS = 8,
    parameter int OUT_BITS = 9,
    parameter int SHIFT_A = 0,
    parameter int SHIFT_B = 0,
    parameter int ROUND_SHIFT = 0,
    parameter int OUT_MIN = -256,
    parameter int OUT_MAX = 255
) (
    input  logic                  clk,
    input  logic                  rst_n,
    input  logic                  a_valid,
    output logic                  a_ready,
    input  logic [  C*A_BITS-1:0] a_data,
    input  logic                  b_valid,
    output logic                  b_ready,
    input  logic [  C*B_BITS-1:0] b_data,
    output logic                  out_valid,
    input  logic                  out_ready,
    output logic [C*OUT_BITS-1:0] out_data
);
  // the sum's width: both shifted operands, one carry bit, and room for the clamp limits
  localparam int AW = A_BITS + SHIFT_A;
  localparam int BW = B_BITS + SHIFT_B;
  localparam int SW = (AW > BW ? AW : BW) + 2 > 66 ? (AW > BW ? AW : BW) + 2 : 66;
  localparam logic signed [SW-1:0] HALF = ROUND_SHIFT > 0 ? SW'(1) <<< (ROUND_SHIFT - 1) : '0;

  if (OUT_BITS < 1 || OUT_BITS > 64 || A_BITS < 2 || B_BITS < 2) begin : g_check_bits
    $error("bnnc_add: A_BITS=%0d, B_BITS=%0d must be at least 2 and OUT_BITS=%0d in 1..64", A_BITS, B_BITS,
           OUT_BITS);
  end

  wire take = a_valid && b_valid && (!out_valid || out_ready);
  assign a_ready = take;
  assign b_ready = take;

  logic [C*OUT_BITS-1:0] result;
  always_comb begin
    for (int c = 0; c < C; c++) begin
      logic signed [SW-1:0] a, b, s;
      a = SW'($signed(a_data[c*A_BITS+:A_BITS])) <<< SHIFT_A;
      b = SW'($signed(b_data[c*B_BITS+:B_BITS])) <<< SHIFT_B;
      s = (a + b + HALF) >>> ROUND_SHIFT;
      if (s < SW'(OUT_MIN)) s = SW'(OUT_MIN);
      else if (s > SW'(OUT_MAX)) s = SW'(OUT_MAX);
      result[c*OUT_BITS+:OUT_BITS] = s[OUT_BITS-1:0];
    end
  end

  always_ff @(posedge clk) begin
    if (!rst_n) out_valid <= 1'b0;
    else if (take) out_valid <= 1'b1;
    else if (out_ready) out_valid <= 1'b0;
  end

  always_ff @(posedge clk) begin
    if (take) out_data <= result;
  end
endmodule
`default_nettype wire
