// Residual addition of two fixed-point streams (ir.Add), element by element:
//   out = clamp(floor((a * 2**SHIFT_A + b * 2**SHIFT_B + half) / 2**ROUND_SHIFT), OUT_MIN, OUT_MAX)
// half = 2**(ROUND_SHIFT-1) when ROUND_SHIFT > 0, else 0. Elements are signed: A_BITS, B_BITS in,
// OUT_BITS out, C per pixel. A pixel leaves when both inputs hold one (a join); the sum and the
// result are registered (two cycles), and the unit takes one pixel per cycle while its output is taken.
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
  // the sum a * 2**SHIFT_A + b * 2**SHIFT_B + half, exact in SUMW bits (three signed M-bit values)
  localparam int AW = A_BITS + SHIFT_A;
  localparam int BW = B_BITS + SHIFT_B;
  localparam int M = AW > BW ? (AW > ROUND_SHIFT + 1 ? AW : ROUND_SHIFT + 1) : (BW > ROUND_SHIFT + 1 ? BW : ROUND_SHIFT + 1);
  localparam int SUMW = M + 2;
  localparam logic signed [SUMW-1:0] HALF = ROUND_SHIFT > 0 ? SUMW'(1) <<< (ROUND_SHIFT - 1) : '0;
  // the clamp limits meet the shifted sum in CW bits: saturated to that range (which keeps every
  // comparison's outcome), so the comparators are no wider than the sum
  localparam int CW = SUMW + 1;
  function automatic longint saturate(input longint v);
    if (CW >= 40) saturate = v;  // every int limit fits
    else if (v < -(longint'(1) <<< (CW - 1))) saturate = -(longint'(1) <<< (CW - 1));
    else if (v > (longint'(1) <<< (CW - 1)) - 1) saturate = (longint'(1) <<< (CW - 1)) - 1;
    else saturate = v;
  endfunction
  localparam logic signed [CW-1:0] LO = CW'(saturate(longint'(OUT_MIN)));
  localparam logic signed [CW-1:0] HI = CW'(saturate(longint'(OUT_MAX)));

  if (OUT_BITS < 1 || OUT_BITS > 64 || A_BITS < 2 || B_BITS < 2) begin : g_check_bits
    $error("bnnc_add: A_BITS=%0d, B_BITS=%0d must be at least 2 and OUT_BITS=%0d in 1..64", A_BITS, B_BITS,
           OUT_BITS);
  end

  // two registers: the sum, then the shifted and clamped result (a wide add and a compare are a
  // cycle each at speed); the pair of inputs is taken while the sum register is free or moves on
  wire advance = !out_valid || out_ready;
  logic sum_valid;
  wire take = a_valid && b_valid && (!sum_valid || advance);
  assign a_ready = take;
  assign b_ready = take;

  logic [C*SUMW-1:0] sum;
  always_ff @(posedge clk) begin
    if (take) begin
      for (int c = 0; c < C; c++) begin
        sum[c*SUMW+:SUMW] <= (SUMW'($signed(a_data[c*A_BITS+:A_BITS])) <<< SHIFT_A)
            + (SUMW'($signed(b_data[c*B_BITS+:B_BITS])) <<< SHIFT_B) + HALF;
      end
    end
  end

  logic [C*OUT_BITS-1:0] result;
  always_comb begin
    for (int c = 0; c < C; c++) begin
      logic signed [CW-1:0] s;
      s = CW'($signed(sum[c*SUMW+:SUMW]) >>> ROUND_SHIFT);
      if (s < LO) result[c*OUT_BITS+:OUT_BITS] = OUT_BITS'(OUT_MIN);
      else if (s > HI) result[c*OUT_BITS+:OUT_BITS] = OUT_BITS'(OUT_MAX);
      else result[c*OUT_BITS+:OUT_BITS] = OUT_BITS'(s);
    end
  end

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      sum_valid <= 1'b0;
      out_valid <= 1'b0;
    end else begin
      if (!sum_valid || advance) sum_valid <= take;
      if (advance) out_valid <= sum_valid;
    end
  end

  always_ff @(posedge clk) begin
    if (advance && sum_valid) out_data <= result;
  end
endmodule
`default_nettype wire
