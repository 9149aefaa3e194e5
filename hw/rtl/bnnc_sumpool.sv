// Sum pool (ir.SumPool; AveragePool with the 1 / (KH*KW) in the tensor's scale): per channel, the
// sum of the KH x KW window's signed EB-bit elements as a signed OB-bit element. No padding
// (padded taps would add exact zeros: bnnc_swg gives them as zero bits). Windows come from bnnc_swg,
// KH*KW + 4 cycles each.
`default_nettype none
module bnnc_sumpool #(
    parameter int IH = 4,
    parameter int IW = 4,
    parameter int C = 1,
    parameter int EB = 8,
    parameter int OB = 10,
    parameter int KH = 2,
    parameter int KW = 2,
    parameter int SH = 2,
    parameter int SW = 2,
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
    output logic [C*OB-1:0] out_data
);
  localparam int T = KH * KW;
  localparam int RB = OH > 1 ? $clog2(OH) : 1;
  localparam int CB = OW > 1 ? $clog2(OW) : 1;

  logic [T*C*EB-1:0] window;
  /* verilator lint_off UNUSEDSIGNAL */  // no padding: every tap is valid; a pool needs no position
  logic [T-1:0] mask;
  logic [RB-1:0] row;
  logic [CB-1:0] col;
  /* verilator lint_on UNUSEDSIGNAL */

  bnnc_swg #(
      .IH(IH), .IW(IW), .C(C), .EB(EB), .KH(KH), .KW(KW), .SH(SH), .SW(SW), .PT(0), .PL(0),
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
      logic signed [OB-1:0] s;
      s = '0;
      for (int t = 0; t < T; t++) s = s + OB'($signed(window[(t*C+c)*EB+:EB]));
      out_data[c*OB+:OB] = s;
    end
  end
endmodule
`default_nettype wire
