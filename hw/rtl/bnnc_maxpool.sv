// Max pool over KH x KW windows (stride, padding) of bit or integer pixels.
//
// Padded taps are ignored (ONNX pads MaxPool with -inf). On bits (EB = 1, bit 1 = -1) the max of
// +-1 values is -1 only when every valid tap is -1: an AND of the valid taps' bits. On integers
// (signed EB-bit) it is the largest valid tap. Windows come from bnnc_swg.
`default_nettype none
module bnnc_maxpool #(
    parameter int IH = 4,
    parameter int IW = 4,
    parameter int C = 1,
    parameter int EB = 1,
    parameter int KH = 2,
    parameter int KW = 2,
    parameter int SH = 2,
    parameter int SW = 2,
    parameter int PT = 0,
    parameter int PL = 0,
    parameter int OH = 2,
    parameter int OW = 2,
    parameter int R = KH + SH
) (
    input  logic            clk,
    input  logic            rst_n,
    input  logic            in_valid,
    output logic            in_ready,
    input  logic [C*EB-1:0] in_data,
    output logic            out_valid,
    input  logic            out_ready,
    output logic [C*EB-1:0] out_data
);
  localparam int T = KH * KW;
  localparam int RB = OH > 1 ? $clog2(OH) : 1;
  localparam int CB = OW > 1 ? $clog2(OW) : 1;

  logic [T*C*EB-1:0] window;
  logic [T-1:0] mask;
  /* verilator lint_off UNUSEDSIGNAL */  // a pool does not need the window position
  logic [RB-1:0] row;
  logic [CB-1:0] col;
  /* verilator lint_on UNUSEDSIGNAL */

  bnnc_swg #(
      .IH(IH), .IW(IW), .C(C), .EB(EB), .KH(KH), .KW(KW), .SH(SH), .SW(SW), .PT(PT), .PL(PL),
      .OH(OH), .OW(OW), .R(R)
  ) windows (
      .clk(clk),
      .rst_n(rst_n),
      .in_valid(in_valid),
      .in_ready(in_ready),
      .in_data(in_data),
      .out_valid(out_valid),
      .out_ready(out_ready),
      .out_data(window),
      .out_mask(mask),
      .out_row(row),
      .out_col(col)
  );

  always_comb begin
    for (int c = 0; c < C; c++) begin
      logic signed [EB-1:0] best;
      // 1 followed by zeros: the AND identity for bits, the most negative value for integers
      best = EB'(1) << (EB - 1);
      for (int t = 0; t < T; t++) begin
        logic signed [EB-1:0] v;
        v = $signed(window[(t*C+c)*EB+:EB]);
        if (mask[t]) begin
          if (EB == 1) best = best & v;
          else if (v > best) best = v;
        end
      end
      out_data[c*EB+:EB] = best;
    end
  end
endmodule
`default_nettype wire
